"""New runs from an earlier one: the same again, or its pair with LayerSync flipped and nothing else changed.

A pair is only honest when the two runs differ in LayerSync alone: same seed (so the same initial
weights, batches and noise), same schedule, same data. Switching LayerSync on needs a student and a
teacher; a run that never had them has no pair to restore, and inventing one would hide a choice
the user has to make.
"""

from typing import Literal

Variant = Literal["again", "baseline", "layersync"]

NO_PAIR = (
    "This run never had LayerSync blocks, so there is no pair to restore: choose the Student and Teacher "
    "blocks (a block map of your data suggests a pair), then start."
)
SUFFIX = {"again": "again", "baseline": "baseline", "layersync": "with LayerSync"}


def variant_config(config: dict, variant: Variant) -> tuple[dict, dict[str, str]]:
    """(the new run's config, problems by form field): ``config`` as it was, with LayerSync off, or on."""
    config = dict(config)
    problems: dict[str, str] = {}
    if variant == "baseline":
        config["layersync_enabled"] = False
    elif variant == "layersync":
        config["layersync_enabled"] = True
        if config.get("layersync_student_block") is None:
            problems["layersync_student_block"] = NO_PAIR
    return config, problems


def offers(run_id: int, config: dict) -> list[dict[str, str]]:
    """The run page's "new run from this one" choices: the same again, and the run with LayerSync flipped."""
    again = {"label": "The same again", "href": f"/runs/new/from/{run_id}",
             "title": "A new run with this run's config, seed included"}
    if config.get("layersync_enabled"):
        flipped = {"label": "Its baseline (LayerSync off)", "href": f"/runs/new/from/{run_id}?variant=baseline",
                   "title": "The same config and seed with LayerSync off: the run to compare this one with"}
    elif config.get("layersync_student_block") is not None:
        flipped = {"label": "With LayerSync", "href": f"/runs/new/from/{run_id}?variant=layersync",
                   "title": f"The same config and seed with LayerSync on, blocks {config['layersync_student_block']} → "
                            f"{config.get('layersync_teacher_block')}"}
    else:
        flipped = {"label": "With LayerSync (choose blocks)", "href": f"/runs/new/from/{run_id}?variant=layersync",
                   "title": "The same config and seed with LayerSync on; this run had no blocks, so you choose them"}
    return [again, flipped]
