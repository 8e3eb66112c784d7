"""A resumed run with the objective keys set reproduces the unbroken run: the timesteps, their shift and the
offset noise all follow from (seed, step), so the arms of a study stay paired and a resume changes nothing."""

import pytest

from tests.utils.factories import fast_config
from trainer.config import validate_config
from trainer.events import read_events
from trainer.train import train

KEYS = dict(weighting_scheme="logit_normal", logit_mean=0.3, flow_schedule_shift=3.0, noise_offset=0.1, validation_steps=0)


def _run(tmp_path, model_dir, name, **overrides):
    out = tmp_path / name
    assert train(validate_config(fast_config(model_dir, out, **overrides)), out) == 0
    return out


def losses(out):
    return {e["step"]: e["loss"] for e in read_events(out) if e["event"] == "metric" and "loss" in e}


def test_resume_with_shifted_logit_normal_timesteps_and_offset_noise_reproduces_the_unbroken_run(tmp_path, tiny_model_dir):
    whole = losses(_run(tmp_path, tiny_model_dir, "whole", **KEYS))
    parts = _run(tmp_path, tiny_model_dir, "parts", max_train_steps=6, **KEYS)
    assert train(validate_config(fast_config(tiny_model_dir, parts, resume_from_checkpoint="latest", **KEYS)), parts) == 0
    assert losses(parts) == pytest.approx(whole, rel=1e-5)
    logs = " ".join(e.get("message", "") for e in read_events(parts) if e["event"] == "log")
    assert "timesteps: logit-normal t (mean 0.3, std 1), shifted by 3 (no scheduler config" in logs
    assert "; noise offset 0.1" in logs
    uniform = losses(_run(tmp_path, tiny_model_dir, "uniform", validation_steps=0))
    assert uniform[2] != pytest.approx(whole[2], rel=1e-3)  # the keys change the run
