"""The registry as a whole: every family it offers has a torch half, and its torch-free half stays torch-free."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.waiting import PATIENCE_S
from trainer.families import FAMILIES, supported_families

ROOT = Path(__file__).resolve().parents[3]
PIPELINE_FAMILIES = [name for name, family in FAMILIES.items() if family.builtin_config is None]


@pytest.mark.parametrize("name", supported_families())
def test_every_supported_family_has_an_implementation_module_with_a_family_record(name):
    from trainer.models import FamilyImplementation, implementation

    module_name, attribute = FAMILIES[name].implementation.split(":")
    assert module_name == f"trainer.models.{name}" and attribute == "FAMILY"
    impl = implementation(name)
    assert isinstance(impl, FamilyImplementation), f"{module_name}.FAMILY is a {type(impl).__name__}"
    assert impl.objective in ("flow", "ddpm")
    assert impl.objective == "flow" or impl.ddpm_scheduler_config is not None, "a ddpm family must give its scheduler config"
    assert impl.lora_target_modules


@pytest.mark.parametrize("name", PIPELINE_FAMILIES)
def test_depth_keys_are_arguments_of_the_diffusers_class(name):
    """The keys the server sums without loading the model must be ones save_pretrained writes to config.json."""
    import diffusers

    family = FAMILIES[name]
    cls = getattr(diffusers, family.diffusers_class, None)
    assert cls is not None, f"diffusers has no {family.diffusers_class}"
    parameters = inspect.signature(cls.__init__).parameters
    assert [key for key in family.depth_keys if key not in parameters] == []
    assert family.depth_keys or family.count_blocks or family.unsupported, "no way to count this family's blocks"
    assert family.media in ("image", "video", "audio")


def test_names_and_aliases_pick_one_family_each():
    names = [alias for family in FAMILIES.values() for alias in (family.name, *family.aliases)]
    assert len(names) == len(set(names))
    assert all(key == family.name for key, family in FAMILIES.items())


def test_the_registry_and_its_block_counts_need_no_torch(tmp_path):
    """The web server imports these to check block indices at submit time: they must stay torch-free."""
    script = f"""
import json, sys
from pathlib import Path
import trainer.families, trainer.config
from trainer.families import FAMILIES, model_depth
unet = {{"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "transformer_layers_per_block": 1, "layers_per_block": 2}}
for name, family in FAMILIES.items():
    folder = Path({str(tmp_path)!r}) / name
    folder.mkdir()
    config = unet if family.count_blocks else {{key: 2 for key in family.depth_keys}}
    (folder / "config.json").write_text(json.dumps(config))
    if family.depth_keys or family.count_blocks:
        assert model_depth(family, str(folder)) > 0, name
trainer.config.validate_config({{"layersync_enabled": True, "layersync_student_block": 8, "layersync_teacher_block": 16}})
assert "torch" not in sys.modules, "torch was imported"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=PATIENCE_S,
                            check=False)
    assert result.returncode == 0, result.stderr


UNET = {"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64], "transformer_layers_per_block": 1, "layers_per_block": 2}


@pytest.mark.parametrize("name", supported_families())
def test_choosing_a_family_with_its_defaults_passes_the_checks(name, tmp_path):
    """Nothing but the family, its model and its data: every unset key takes a value the family accepts."""
    from trainer.config import validate_config
    from trainer.families import family_defaults

    family = FAMILIES[name]
    config = {"model_family": name, "layersync_enabled": True, "layersync_student_block": 1, "layersync_teacher_block": 2}
    if family.builtin_config is None:
        (tmp_path / "config.json").write_text(json.dumps(UNET if family.count_blocks else {k: 2 for k in family.depth_keys}))
        config.update(pretrained_model_name_or_path=str(tmp_path), instance_data_dir=str(tmp_path))
    validated = validate_config(config)
    defaults = family_defaults(name)
    assert {key: getattr(validated, key) for key in defaults} == defaults
    assert (validated.num_frames is not None) == (family.media == "video")
    assert (validated.audio_duration is not None) == (family.media == "audio")
