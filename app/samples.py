"""Every validation step's samples of a run, for the run page's step slider.

The trainer keeps each validation's output (``samples/step_XXXXXXX.png``, or ``.wav`` for audio
families) and announces it with a ``sample`` event that carries the prompts. The files are what the
page shows (a step whose file is gone is not offered); the captions are the prompts of that step's
latest ``sample`` event (a resumed run that sampled a step again wrote its file again).
"""

import json
import re
from pathlib import Path

from sqlmodel import Session, select

from app.eventlog import file_url
from app.models import Run, RunEvent
from trainer.families import FAMILIES

SAMPLE_FILE = re.compile(r"step_(\d+)\.(png|wav)")


def sample_files(output_dir: str | Path) -> list[tuple[int, str]]:
    """(step, path relative to the run folder) of each sample file, by step."""
    found = {}
    folder = Path(output_dir) / "samples"
    for path in folder.glob("step_*.*") if folder.is_dir() else []:
        match = SAMPLE_FILE.fullmatch(path.name)
        if match and path.is_file():
            found[int(match[1])] = f"samples/{path.name}"
    return sorted(found.items())


def _prompts_by_step(session: Session, run_id: int) -> dict[int, list[str]]:
    prompts = {}
    for data in session.exec(select(RunEvent.data).where(RunEvent.run_id == run_id, RunEvent.kind == "sample")
                             .order_by(RunEvent.seq)):
        event = json.loads(data)
        if isinstance(event.get("step"), int) and isinstance(event.get("prompts"), list):
            prompts[event["step"]] = [str(p) for p in event["prompts"]]
    return prompts


def layout_words(config: dict, n_prompts: int) -> str:
    """How a sample file of this run's family is laid out, so the captions can be matched to it."""
    family = FAMILIES.get(config.get("model_family", "demo"))
    media = family.media if family is not None else "image"
    if config.get("model_family", "demo") == "demo":
        return "one digit class per column, left to right (two rows: two samples of each)"
    if media == "audio":
        return "the first prompt's sample"
    if media == "video":
        return "one row of frames per prompt, top to bottom"
    return "one image per prompt, left to right, then top to bottom" if n_prompts > 1 else "one image"


def run_samples(session: Session, run: Run) -> list[dict]:
    """The run's samples, oldest first: ``{"step", "url", "name", "audio", "prompts"}``."""
    if not run.output_dir:
        return []
    prompts = _prompts_by_step(session, run.id)
    return [{"step": step, "url": file_url(run.id, path), "name": path.rsplit("/", 1)[-1], "audio": path.endswith(".wav"),
             "prompts": prompts.get(step, [])} for step, path in sample_files(run.output_dir)]


def _index(value: str | None) -> int | None:
    return int(value) if value is not None and re.fullmatch(r"[0-9]{1,9}", value) else None


def chosen(samples: list[dict], index: str | None, newest: str | None) -> int | None:
    """The index of the sample to show: the one asked for (``?sample=``, from 0), else the newest. A page
    that showed its newest (``sample`` = ``newest``, the newest index it knew) gets the newest there is now."""
    asked, known = _index(index), _index(newest)
    if not samples:
        return None
    if asked is None or asked == known or asked >= len(samples):
        return len(samples) - 1
    return asked
