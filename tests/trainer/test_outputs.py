"""The torch-free lister of a run's checkpoints and final weights (the server uses it too)."""

import json
import subprocess
import sys

import pytest

from trainer.outputs import list_checkpoints


def _checkpoint(folder, step, files=()):
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    (folder / "state.json").write_text(json.dumps({"step": step}))


def test_lists_complete_checkpoints_oldest_first_with_their_kind(tmp_path):
    _checkpoint(tmp_path / "checkpoints" / "step_0000100", 100, ["pytorch_lora_weights.safetensors"])
    _checkpoint(tmp_path / "checkpoints" / "step_0000020", 20, ["lora/adapter_model.safetensors"])  # the old layout
    _checkpoint(tmp_path / "checkpoints" / "step_0000003", 3, ["transformer/diffusion_pytorch_model.safetensors"])
    (tmp_path / "checkpoints" / ".tmp_step_0000200").mkdir()  # being written
    (tmp_path / "checkpoints" / "step_0000300").mkdir()  # no state.json: incomplete
    _checkpoint(tmp_path / "final", 100, ["pytorch_lora_weights.safetensors"])
    listed = list_checkpoints(tmp_path)
    assert [(c["name"], c["step"], c["kind"]) for c in listed] == [
        ("step_0000003", 3, "full"), ("step_0000020", 20, "lora"), ("step_0000100", 100, "lora"), ("final", 100, "lora"),
    ]
    assert listed[0]["path"] == str(tmp_path / "checkpoints" / "step_0000003")
    assert listed[-1]["path"] == str(tmp_path / "final")
    assert set(listed[0]) == {"name", "step", "kind", "path"}


def test_a_run_without_outputs_lists_nothing(tmp_path):
    assert list_checkpoints(tmp_path) == []
    assert list_checkpoints(tmp_path / "missing") == []
    (tmp_path / "final").mkdir()  # final being written: no state.json yet
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_0000001").mkdir()
    (tmp_path / "checkpoints" / "step_0000001" / "state.json").write_text("not json")
    assert list_checkpoints(tmp_path) == []


def test_the_lister_does_not_import_torch():
    code = "import sys, trainer.outputs; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_family_whose_pipeline_has_a_lora_loader_writes_its_layout():
    """The registry walked: each family's adapters go in its diffusers pipeline's LoRA layout, except the
    families whose pipeline has no LoRA loader (they keep lora/adapter_model.safetensors)."""
    from trainer.families import FAMILIES
    from trainer.lora_format import lora_loader

    without = {name for name, family in FAMILIES.items() if family.unsupported is None and lora_loader({"model_family": name}) is None}
    assert without == {"demo", "pixart_sigma", "omnigen", "longcat", "cosmos"}
    assert lora_loader({"model_family": "sdxl"}).prefix == lora_loader({"model_family": "kolors"}).prefix == "unet."
    assert lora_loader({"model_family": "flux"}).pipeline_class.__name__ == "FluxPipeline"
    assert lora_loader({"model_family": "wan"}).prefix == "transformer."


def test_export_takes_the_newest_weights_unless_told(tmp_path):
    from trainer.export import ExportError, pick_output

    _checkpoint(tmp_path / "checkpoints" / "step_0000002", 2, ["pytorch_lora_weights.safetensors"])
    _checkpoint(tmp_path / "final", 2, ["pytorch_lora_weights.safetensors"])
    assert pick_output(tmp_path)["name"] == "final"
    _checkpoint(tmp_path / "checkpoints" / "step_0000004", 4, ["pytorch_lora_weights.safetensors"])  # resumed to train on
    assert pick_output(tmp_path)["name"] == "step_0000004"
    assert pick_output(tmp_path, "final")["step"] == 2
    with pytest.raises(ExportError, match="no checkpoint and no final"):
        pick_output(tmp_path / "empty")
