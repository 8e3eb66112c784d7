"""The span meter and the collapse guard (trainer/guard.py), alone and in real short runs of a tiny demo model."""

import pytest
import torch
from torch import nn

from tests.utils.factories import fast_config, make_tiny_demo_model
from trainer.capture import Block, tensor_output
from trainer.config import validate_config
from trainer.events import read_events
from trainer.guard import ARM_AT, CollapseGuard, SpanMeter, span_blocks
from trainer.models.demo_dit import DiTBlock
from trainer.train import train


class Scale(nn.Module):
    """x → x + a·x: a relative update of exactly |a|."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x):
        return x + self.a * x


def stack(updates):
    modules = [Scale(a) for a in updates]
    return modules, [Block(m, tensor_output) for m in modules]


def forward(modules, x):
    for m in modules:
        x = m(x)
    return x


def test_the_span_is_the_blocks_strictly_between_each_student_and_its_teacher():
    assert span_blocks([(3, 11)]) == list(range(4, 11))
    assert span_blocks([(3, 4)]) == [] and span_blocks([(5, 5)]) == []
    assert span_blocks([(2, 5), (4, 8)]) == [3, 4, 5, 6, 7]


def test_the_meter_reads_the_mean_relative_update_of_the_span_only_when_armed():
    modules, blocks = stack([0.9, 0.1, 0.2, 0.3, 0.4, 0.9])
    meter = SpanMeter(blocks, span_blocks([(0, 5)]))  # blocks 1..4
    x = torch.randn(2, 5, 8)
    forward(modules, x)
    assert meter.read() is None  # not armed: nothing measured
    with meter.measure():
        forward(modules, x)
    assert meter.read().item() == pytest.approx(0.25, rel=1e-5)
    with meter.measure(on=False):
        forward(modules, x)
    assert meter.read() is None
    meter.remove()


def test_a_span_of_identity_blocks_reads_zero():
    modules, blocks = stack([0.5, 0.0, 0.0, 0.0, 0.5])
    meter = SpanMeter(blocks, span_blocks([(0, 4)]))
    with meter.measure():
        forward(modules, torch.randn(2, 5, 8))
    assert meter.read().item() == 0.0


def test_a_healthy_span_never_warns_even_when_it_wobbles():
    guard = CollapseGuard()
    healthy = [0.01, 0.03, 0.08, 0.12, 0.10, 0.14, 0.09, 0.11, 0.13, 0.07, 0.12]  # the lowest is half the best
    assert [guard.observe(step, v) for step, v in enumerate(healthy, 1)] == [None] * len(healthy)
    assert guard.best == 0.14 and guard.fired == []


def test_a_span_that_never_did_work_is_no_collapse():
    guard = CollapseGuard()
    assert all(guard.observe(step, ARM_AT * 0.9 * (step % 2)) is None for step in range(1, 20))


def test_a_span_falling_to_identity_warns_once_and_again_only_after_recovering():
    guard = CollapseGuard(span_text="the blocks between student and teacher (9, 10)")
    series = [0.10, 0.12, 0.06, 0.02, 0.01, 0.0, 0.05, 0.07, 0.01]
    said = {step: guard.observe(step, v) for step, v in enumerate(series, 1)}
    assert [step for step, words in said.items() if words] == [4, 9]  # below 25 % of 0.12; re-armed at 0.07 ≥ 50 %
    assert "blocks between student and teacher (9, 10)" in said[4] and "17% of its best 0.12 (step 2)" in said[4]
    assert "layersync_on_collapse is warn" in said[4] and guard.stopped_at is None


def test_on_collapse_stop_sets_the_weight_to_zero_from_the_next_step_and_keeps_its_state():
    guard = CollapseGuard("stop")
    for step, v in enumerate([0.1, 0.1, 0.01], 1):
        words = guard.observe(step * 10, v)
    assert guard.stopped_at == 31 and "weight is 0 from step 31 on" in words
    again = CollapseGuard("stop")
    again.load_state_dict(guard.state_dict())
    assert again.state_dict() == guard.state_dict() and again.stopped_at == 31


# ---- in the training loop -------------------------------------------------------------------------

@pytest.fixture
def healthy_model(tmp_path_factory):
    # perturbed away from adaLN-Zero's identity blocks, so the span does work from step 1
    return make_tiny_demo_model(tmp_path_factory.mktemp("perturbed") / "model", perturb=0.05)


@pytest.fixture
def collapse_after(monkeypatch):
    """collapse_after(k): from step k + 1 on, the blocks between student and teacher return their input."""
    import trainer.train as loop

    state = {"step": 0, "after": None}
    real_seed, real_guard, real_forward = loop.step_seed, loop.set_up_guard, DiTBlock.forward

    def step_seed(seed, step):
        state["step"] = step
        return real_seed(seed, step)

    def set_up_guard(config, layersync, blocks, log):
        meter, guard = real_guard(config, layersync, blocks, log)
        for index in meter.span:
            blocks[index].module.collapses = True
        return meter, guard

    def block_forward(self, x, c):
        if getattr(self, "collapses", False) and state["after"] is not None and state["step"] > state["after"]:
            return x
        return real_forward(self, x, c)

    monkeypatch.setattr(loop, "step_seed", step_seed)
    monkeypatch.setattr(loop, "set_up_guard", set_up_guard)
    monkeypatch.setattr(DiTBlock, "forward", block_forward)
    return lambda k: state.update(after=k)


def run(model_dir, out, **overrides):
    config = validate_config(fast_config(model_dir, out, validation_steps=0, **overrides))
    code = train(config, out)
    events = read_events(out)
    return code, [e for e in events if e["event"] == "metric"], [e for e in events if e["event"] == "log"]


def guard_warnings(logs):
    return [e for e in logs if e["level"] == "warning" and "collapse guard" in e["message"]]


def test_a_healthy_run_logs_the_span_update_and_no_warning(tmp_path, healthy_model):
    code, metrics, logs = run(healthy_model, tmp_path / "run")
    assert code == 0
    assert all(m["layersync_span_update"] > ARM_AT for m in metrics)
    assert all(m["layersync_lambda"] == 0.2 for m in metrics)
    assert guard_warnings(logs) == []


def test_identity_blocks_in_the_span_make_the_guard_warn_and_training_goes_on(tmp_path, healthy_model, collapse_after):
    collapse_after(4)
    code, metrics, logs = run(healthy_model, tmp_path / "run")
    assert code == 0
    spans = {m["step"]: m["layersync_span_update"] for m in metrics}
    assert spans[4] > ARM_AT and spans[6] == 0.0
    warnings = guard_warnings(logs)
    assert len(warnings) == 1 and "at step 6" in warnings[0]["message"]
    assert all(m["layersync_lambda"] == 0.2 for m in metrics)


def test_on_collapse_stop_sets_lambda_zero_for_the_rest_of_the_run(tmp_path, healthy_model, collapse_after):
    collapse_after(4)
    code, metrics, logs = run(healthy_model, tmp_path / "run", layersync_on_collapse="stop")
    assert code == 0
    assert "weight is 0 from step 7 on" in guard_warnings(logs)[0]["message"]
    before, after = [m for m in metrics if m["step"] <= 6], [m for m in metrics if m["step"] >= 8]
    assert all(m["layersync_lambda"] == 0.2 and m["layersync_loss"] < 0 for m in before)
    assert all(m["layersync_lambda"] == 0.0 and m["layersync_loss"] == 0.0 for m in after)
    assert all(m["layersync_similarity"] is not None and m["loss"] == m["diffusion_loss"] for m in after)


def test_a_resumed_run_keeps_the_guards_stop_and_reproduces_the_unbroken_run(tmp_path, healthy_model, collapse_after):
    collapse_after(4)
    _, whole, whole_logs = run(healthy_model, tmp_path / "whole", layersync_on_collapse="stop")
    _, first, _ = run(healthy_model, tmp_path / "parts", layersync_on_collapse="stop", max_train_steps=6)
    code, _, _ = run(healthy_model, tmp_path / "parts", layersync_on_collapse="stop", resume_from_checkpoint="latest")
    assert code == 0
    events = read_events(tmp_path / "parts")
    metrics = [e for e in events if e["event"] == "metric"]
    keys = ("loss", "layersync_loss", "layersync_lambda", "layersync_span_update")
    assert [m["step"] for m in metrics] == [m["step"] for m in whole]
    assert [m[k] for m in metrics for k in keys] == pytest.approx([m[k] for m in whole for k in keys], rel=1e-5)
    assert len(guard_warnings([e for e in events if e["event"] == "log"])) == len(guard_warnings(whole_logs)) == 1
