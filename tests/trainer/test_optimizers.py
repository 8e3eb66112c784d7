"""The optimizers: each trains a tiny demo model and resumes exactly from its optimizer.pt; a missing package is
told before training, naming the extra that installs it."""

import importlib.util

import pytest
import torch
from safetensors.torch import load_file

from tests.utils.factories import fast_config
from trainer import optimizers
from trainer.config import ConfigError, validate_config
from trainer.events import read_events
from trainer.train import train

PACKAGES = {"adamw_8bit": "bitsandbytes", "prodigy": "prodigyopt", "adafactor": None}


def needs(name):
    package = PACKAGES[name]
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (pip install 'layersync-studio[memory]')")


def losses(events):
    return {e["step"]: e["loss"] for e in events if e["event"] == "metric" and "loss" in e}


def short(model_dir, out, **overrides):
    settings = dict(max_train_steps=8, logging_steps=1, validation_steps=0, checkpointing_steps=4)
    return validate_config(fast_config(model_dir, out, **{**settings, **overrides}))


@pytest.mark.parametrize("name", ["adamw_8bit", "adafactor", "prodigy"])
def test_each_optimizer_trains_and_a_resumed_run_repeats_the_unbroken_one(name, tmp_path, tiny_model_dir):
    needs(name)
    whole = tmp_path / "whole"
    assert train(short(tiny_model_dir, whole, optimizer=name), whole) == 0
    unbroken = losses(read_events(whole))
    assert len(unbroken) == 8 and all(torch.isfinite(torch.tensor(list(unbroken.values()))))
    # it trained: the weights moved away from the initial model's
    start = load_file(tiny_model_dir / "diffusion_pytorch_model.safetensors")
    end = load_file(whole / "checkpoints" / "step_0000008" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert max((end[k] - start[k]).abs().max().item() for k in start) > 1e-5

    parts = tmp_path / "parts"
    assert train(short(tiny_model_dir, parts, optimizer=name, max_train_steps=4), parts) == 0
    assert train(short(tiny_model_dir, parts, optimizer=name, resume_from_checkpoint="latest"), parts) == 0
    assert losses(read_events(parts)) == pytest.approx(unbroken, rel=1e-5)
    # the checkpoint holds this optimizer's own state (8-bit AdamW: its moments in uint8)
    state = torch.load(parts / "checkpoints" / "step_0000008" / "optimizer.pt", weights_only=True)
    if name == "adamw_8bit":
        flat = [t for s in state["state"].values() for t in s.get("__bnb_optimizer_quant_state__", s).values()]
        assert any(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in flat)
    if name == "prodigy":
        assert state["param_groups"][0]["d"] > state["param_groups"][0]["d0"]  # its step size estimate grew
    if name == "adafactor":
        assert any("row_var" in s for s in state["state"].values())  # the factored second moment


def test_the_optimizer_built_is_the_one_asked_for(tiny_model_dir, tmp_path):
    params = [torch.nn.Parameter(torch.zeros(64, 64))]
    device = torch.device("cpu")
    for name, type_name in (("adamw", "AdamW"), ("adamw_8bit", "AdamW8bit"), ("adafactor", "Adafactor"), ("prodigy", "Prodigy")):
        if PACKAGES.get(name) and importlib.util.find_spec(PACKAGES[name]) is None:
            continue
        config = validate_config({"optimizer": name, "adam_weight_decay": 0.01, "learning_rate": 0.5})
        optimizer = optimizers.make_optimizer(config, params, device)
        assert type(optimizer).__name__ == type_name
        assert optimizer.param_groups[0]["lr"] == 0.5 and optimizer.param_groups[0]["weight_decay"] == 0.01


def hide(monkeypatch, *packages):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else real(name, *a))


def test_a_missing_package_is_told_before_training_with_the_extra_to_install(monkeypatch):
    hide(monkeypatch, "bitsandbytes", "torchao")
    with pytest.raises(ConfigError) as caught:
        validate_config({"optimizer": "adamw_8bit", "model_type": "lora", "base_model_precision": "int8"})
    errors = dict(caught.value.errors)
    assert errors["optimizer"] == (
        "optimizer adamw_8bit needs the bitsandbytes package, which is not installed: pip install "
        "'layersync-studio[adamw8bit]' (or pip install bitsandbytes), or choose optimizer adamw")
    assert "pip install 'layersync-studio[quantize]'" in errors["base_model_precision"]
    hide(monkeypatch, "prodigyopt")
    with pytest.raises(ConfigError, match=r"layersync-studio\[prodigy\]"):
        validate_config({"optimizer": "prodigy"})


def test_the_worker_refuses_a_missing_package_too_before_any_step(monkeypatch, tmp_path, tiny_model_dir):
    """A config validated where the package was installed, trained where it is not."""
    config = validate_config(fast_config(tiny_model_dir, tmp_path / "run", optimizer="prodigy", validation_steps=0))
    hide(monkeypatch, "prodigyopt")
    assert train(config, tmp_path / "run") == 2
    events = read_events(tmp_path / "run")
    assert events[-2]["event"] == "error" and events[-2]["errors"][0][0] == "optimizer"
    assert "pip install 'layersync-studio[prodigy]'" in events[-1]["reason"]
    assert not any(e["event"] == "metric" for e in events)


def test_simpletuner_names_and_prodigys_own_learning_rate():
    assert validate_config({"optimizer": "bnb-adamw8bit"}).optimizer == "adamw_8bit"
    assert validate_config({"optimizer": "adamw_bf16"}).optimizer == "adamw"
    assert validate_config({"optimizer": "prodigy"}).learning_rate == 1.0  # a multiplier of its own estimate
    assert validate_config({"optimizer": "prodigy", "learning_rate": 0.5}).learning_rate == 0.5
    assert validate_config({"optimizer": "adamw"}).learning_rate == 1e-3  # the demo family's default
    notices = validate_config({"optimizer": "prodigy", "learning_rate": 1e-4}).notices()
    assert any("10,000 times smaller" in notice for notice in notices)
    with pytest.raises(ConfigError, match="must be one of 'adamw', 'adamw_8bit', 'adafactor' or 'prodigy', got 'sgd'"):
        validate_config({"optimizer": "sgd"})


def test_the_form_lists_each_optimizer_and_marks_a_missing_one(monkeypatch):
    from app import forms

    assert [value for value, _ in forms.FORM_FIELDS["optimizer"].choices] == list(optimizers.OPTIMIZERS)
    hide(monkeypatch, "prodigyopt")
    labels = forms._optimizer_choices()
    assert labels["prodigy"] == "Prodigy (prodigyopt) — not installed" and labels["adamw"] == "AdamW (torch)"
