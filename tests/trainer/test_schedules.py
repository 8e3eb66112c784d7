"""LayerSync's weight over a run: the schedules, the warm-up and the stops (trainer/schedules.py)."""

import math

import pytest

from trainer.config import ConfigError, validate_config
from trainer.schedules import describe_schedule, lambda_at


def config(**overrides):
    base = {"layersync_enabled": True, "layersync_student_block": 4, "layersync_teacher_block": 12,
            "layersync_lambda": 0.4, "max_train_steps": 101}
    return validate_config(base | overrides)


def test_constant_is_the_weight_at_every_step_by_default():
    c = config()
    assert c.layersync_lambda_schedule == "constant" and c.layersync_lambda_end == 0
    assert [lambda_at(c, s) for s in (1, 50, 101)] == [0.4, 0.4, 0.4]


def test_the_warm_up_rises_linearly_from_zero_to_the_weight():
    c = config(layersync_lambda_warmup_steps=10)
    assert lambda_at(c, 1) == pytest.approx(0.04)
    assert lambda_at(c, 5) == pytest.approx(0.2)
    assert lambda_at(c, 10) == pytest.approx(0.4)
    assert lambda_at(c, 11) == 0.4


def test_linear_goes_from_the_weight_after_the_warm_up_to_exactly_the_end_at_the_last_step():
    c = config(layersync_lambda_schedule="linear", layersync_lambda_end=0.1, layersync_lambda_warmup_steps=1)
    # steps 2..101: 100 steps, progress (step - 2) / 99
    assert lambda_at(c, 1) == pytest.approx(0.4)  # the warm-up's one step reaches the weight
    assert lambda_at(c, 2) == pytest.approx(0.4)
    assert lambda_at(c, 2 + 33) == pytest.approx(0.4 - 0.3 / 3)
    assert lambda_at(c, 101) == pytest.approx(0.1)


def test_cosine_is_half_way_at_the_middle_and_can_rise_too():
    c = config(layersync_lambda_schedule="cosine")  # steps 1..101, progress (step - 1) / 100
    assert lambda_at(c, 1) == pytest.approx(0.4)
    assert lambda_at(c, 26) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))
    assert lambda_at(c, 51) == pytest.approx(0.2)
    assert lambda_at(c, 101) == pytest.approx(0.0, abs=1e-12)
    rising = config(layersync_lambda_schedule="cosine", layersync_lambda=0.1, layersync_lambda_end=0.5)
    assert lambda_at(rising, 51) == pytest.approx(0.3) and lambda_at(rising, 101) == pytest.approx(0.5)


def test_the_stop_step_and_the_guards_stop_set_the_weight_to_zero_from_that_step_on():
    c = config(layersync_stop_step=40)
    assert lambda_at(c, 39) == 0.4 and lambda_at(c, 40) == 0.0 and lambda_at(c, 101) == 0.0
    assert lambda_at(config(), 30, stopped_at=31) == 0.4
    assert lambda_at(config(), 31, stopped_at=31) == 0.0
    assert lambda_at(c, 20, stopped_at=21) == 0.4 and lambda_at(c, 21, stopped_at=21) == 0.0  # the earlier stop


def test_off_means_zero():
    assert lambda_at(validate_config({}), 1) == 0.0


def test_the_schedule_is_described_for_the_log_and_silent_when_constant():
    assert describe_schedule(config()) is None
    text = describe_schedule(config(layersync_lambda_schedule="linear", layersync_lambda_warmup_steps=5,
                                    layersync_stop_step=80))
    assert "warm-up from 0 over 5 steps" in text and "linear from 0.4 to 0 at step 101" in text and "step 80" in text


def test_bad_values_are_all_told_at_once():
    with pytest.raises(ConfigError) as caught:
        config(layersync_lambda_schedule="exp", layersync_lambda_end=-1, layersync_lambda_warmup_steps=-2,
               layersync_stop_step=0, layersync_on_collapse="ignore")
    keys = {key for key, _ in caught.value.errors}
    assert keys == {"layersync_lambda_schedule", "layersync_lambda_end", "layersync_lambda_warmup_steps",
                    "layersync_stop_step", "layersync_on_collapse"}


def test_notices_say_when_a_stop_or_warm_up_cannot_act():
    late = config(layersync_stop_step=500).notices()
    assert any("after the last step" in n for n in late)
    early = config(layersync_stop_step=5, layersync_lambda_warmup_steps=10).notices()
    assert any("full weight is never reached" in n for n in early)
    neighbours = config(layersync_student_block=4, layersync_teacher_block=5).notices()
    assert any("no block lies between student and teacher" in n for n in neighbours)
    assert not any("no block lies" in n for n in config().notices())


# ---- in the training loop -------------------------------------------------------------------------

def train_run(model_dir, out, **overrides):
    from tests.utils.factories import fast_config
    from trainer.events import read_events
    from trainer.train import train

    assert train(validate_config(fast_config(model_dir, out, validation_steps=0, checkpointing_steps=0, **overrides)), out) == 0
    events = read_events(out)
    return [e for e in events if e["event"] == "metric"], [e for e in events if e["event"] == "log"]


def test_after_the_stop_step_the_term_is_exactly_zero_and_the_similarity_still_logged(tmp_path, tiny_model_dir):
    metrics, logs = train_run(tiny_model_dir, tmp_path / "run", layersync_stop_step=7, layersync_lambda_warmup_steps=2)
    by_step = {m["step"]: m for m in metrics}
    assert by_step[2]["layersync_lambda"] == pytest.approx(0.2) and by_step[6]["layersync_loss"] < 0
    for step in (8, 10, 12):
        m = by_step[step]
        assert m["layersync_loss"] == 0.0 and str(m["layersync_loss"]) == "0.0"  # not -0.0
        assert m["layersync_lambda"] == 0.0 and m["loss"] == m["diffusion_loss"]
        assert 0 < m["layersync_similarity"] <= 1
    assert [e["message"] for e in logs if e["message"].startswith("layersync_stop_step 7")]
    assert any("0 from step 7 on (layersync_stop_step)" in e["message"] for e in logs)


def test_a_stop_at_step_one_trains_exactly_as_layersync_off(tmp_path, tiny_model_dir):
    stopped, _ = train_run(tiny_model_dir, tmp_path / "stopped", layersync_stop_step=1, max_train_steps=6)
    off, _ = train_run(tiny_model_dir, tmp_path / "off", layersync_enabled=False, max_train_steps=6)
    assert [m["diffusion_loss"] for m in stopped] == pytest.approx([m["diffusion_loss"] for m in off], rel=1e-5)
    assert all(m["layersync_similarity"] is not None for m in stopped)


def test_a_schedule_is_followed_step_by_step_in_the_metric_events(tmp_path, tiny_model_dir):
    metrics, _ = train_run(tiny_model_dir, tmp_path / "run", layersync_lambda_schedule="linear", layersync_lambda=0.3,
                           logging_steps=1)  # one step per event: its loss is the weight in force times its similarity
    c = validate_config({"layersync_enabled": True, "layersync_student_block": 8, "layersync_teacher_block": 16,
                         "layersync_lambda": 0.3, "layersync_lambda_schedule": "linear", "max_train_steps": 12})
    assert [m["layersync_lambda"] for m in metrics] == pytest.approx([lambda_at(c, m["step"]) for m in metrics])
    assert metrics[-1]["layersync_lambda"] == 0.0 and metrics[-1]["layersync_loss"] == 0.0
    assert [m["layersync_loss"] for m in metrics] == pytest.approx(
        [-m["layersync_lambda"] * m["layersync_similarity"] for m in metrics], rel=1e-5, abs=1e-9)
