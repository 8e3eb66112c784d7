"""Real, short training runs of a tiny demo model (a few seconds each)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.utils.factories import fast_config, make_tiny_demo_model, write_config
from tests.utils.waiting import PATIENCE_S, wait_until
from trainer.capture import Block
from trainer.config import validate_config
from trainer.events import read_events
from trainer.families import FAMILIES, Family
from trainer.models import FamilyImplementation, demo
from trainer.train import train

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = {"step", "loss", "diffusion_loss", "layersync_loss", "layersync_similarity", "lr", "step_time",
               "layersync_lambda", "layersync_span_update"}


def run(tmp_path, tiny_model_dir, name="run", **overrides):
    out = tmp_path / name
    config = validate_config(fast_config(tiny_model_dir, out, **overrides))
    code = train(config, out)
    return code, read_events(out), out


def losses(events):
    return {e["step"]: e["loss"] for e in events if e["event"] == "metric" and "loss" in e}


def test_a_short_run_writes_the_whole_events_contract(tmp_path, tiny_model_dir):
    code, events, out = run(tmp_path, tiny_model_dir, max_train_steps=20, learning_rate=2e-3)
    assert code == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and events[-1]["status"] == "completed"
    assert {"status", "log", "metric", "sample", "checkpoint", "end"} <= set(kinds)
    metrics = [e for e in events if e["event"] == "metric" and "loss" in e]
    assert [m["step"] for m in metrics] == list(range(2, 21, 2))
    for m in metrics:
        assert METRIC_KEYS <= m.keys()
        assert m["loss"] == pytest.approx(m["diffusion_loss"] + m["layersync_loss"], rel=1e-5)
        assert m["layersync_loss"] == pytest.approx(-0.2 * m["layersync_similarity"], rel=1e-5)
    assert metrics[-1]["diffusion_loss"] < metrics[0]["diffusion_loss"]
    samples = [e for e in events if e["event"] == "sample"]
    assert [s["step"] for s in samples] == [6, 12, 18, 20]
    assert all((out / s["path"]).stat().st_size > 0 for s in samples)
    checkpoints = [e["path"] for e in events if e["event"] == "checkpoint"]
    assert checkpoints == [f"checkpoints/step_{s:07d}" for s in (6, 12, 18, 20)]
    saved = json.loads((out / checkpoints[-1] / "config.json").read_text())
    assert saved["layersync_student_block"] == 8 and saved["max_train_steps"] == 20
    assert (out / checkpoints[-1] / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert any(e["event"] == "metric" and "val_diffusion_loss" in e for e in events)


def test_a_larger_weight_pulls_the_student_closer_to_the_teacher(tmp_path):
    # blocks perturbed away from the identity, so student and teacher start apart
    model_dir = make_tiny_demo_model(tmp_path / "model", perturb=0.05)

    def final_similarity(weight, name):
        _, events, _ = run(tmp_path, model_dir, name, max_train_steps=30, learning_rate=3e-3,
                           layersync_lambda=weight, validation_steps=0, checkpointing_steps=0)
        return [e for e in events if e["event"] == "metric" and "loss" in e][-1]["layersync_similarity"]

    assert final_similarity(2.0, "strong") > final_similarity(0.01, "weak") + 0.02


def test_the_same_seed_gives_the_same_run(tmp_path, tiny_model_dir):
    _, first, _ = run(tmp_path, tiny_model_dir, "a", validation_steps=0)
    _, second, _ = run(tmp_path, tiny_model_dir, "b", validation_steps=0)
    # equal up to float rounding: the BLAS may split a product differently when the machine is busy
    assert losses(first) == pytest.approx(losses(second), rel=1e-5)
    assert losses(first) != losses(run(tmp_path, tiny_model_dir, "c", validation_steps=0, seed=1)[1])


def test_resume_continues_at_the_right_step_with_the_same_losses(tmp_path, tiny_model_dir):
    _, whole, _ = run(tmp_path, tiny_model_dir, "whole", use_ema=True)
    code, _, out = run(tmp_path, tiny_model_dir, "parts", max_train_steps=6, use_ema=True)
    assert code == 0
    config = validate_config(fast_config(tiny_model_dir, out, use_ema=True, resume_from_checkpoint="latest"))
    assert train(config, out) == 0
    events = read_events(out)
    resumed_at = max(i for i, e in enumerate(events) if e["event"] == "status" and e["status"] == "starting")
    after = [e for e in events[resumed_at:] if e["event"] == "metric" and "loss" in e]
    assert after[0]["step"] == 8
    assert any("resumed from" in e.get("message", "") and "at step 6" in e["message"] for e in events[resumed_at:])
    assert losses(events) == pytest.approx(losses(whole), rel=1e-5)


def test_resume_reads_a_checkpoint_whose_weights_are_sharded(tmp_path, tiny_model_dir):
    """save_pretrained splits models over 10 GB into shards; resuming must read them all."""
    from trainer.models.demo_dit import DemoDiT

    _, whole, _ = run(tmp_path, tiny_model_dir, "whole", validation_steps=0)
    _, _, out = run(tmp_path, tiny_model_dir, "parts", max_train_steps=6, validation_steps=0)
    weights = out / "checkpoints" / "step_0000006" / "transformer"
    model = DemoDiT.from_pretrained(weights)
    for file in weights.glob("diffusion_pytorch_model*"):
        file.unlink()
    model.save_pretrained(weights, max_shard_size="20KB")
    assert len(list(weights.glob("*.safetensors"))) > 1
    config = validate_config(fast_config(tiny_model_dir, out, validation_steps=0, resume_from_checkpoint="latest"))
    assert train(config, out) == 0
    assert losses(read_events(out)) == pytest.approx(losses(whole), rel=1e-5)


def test_an_existing_run_is_never_overwritten(tmp_path, tiny_model_dir):
    run(tmp_path, tiny_model_dir, "once", max_train_steps=2, validation_steps=0)
    code, events, _ = run(tmp_path, tiny_model_dir, "once", max_train_steps=2, validation_steps=0)
    assert code == 2
    assert events[-2]["event"] == "error" and "set resume_from_checkpoint to 'latest'" in events[-2]["message"]


def test_gradient_checkpointing_trains_the_same(tmp_path, tiny_model_dir):
    _, plain, _ = run(tmp_path, tiny_model_dir, "plain", validation_steps=0, max_train_steps=6)
    _, checkpointed, _ = run(tmp_path, tiny_model_dir, "ckpt", validation_steps=0, max_train_steps=6, gradient_checkpointing=True)
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-4)


def test_a_hidden_state_shape_layersync_cannot_use_stops_before_step_one(tmp_path, tiny_model_dir, monkeypatch):
    pooled = FamilyImplementation(
        load_model=demo.load_model,
        blocks=lambda model: [Block(b, lambda out: out.mean(dim=1)) for b in model.blocks],  # (B, D): no tokens
        load_data=demo.load_data,
        predict=demo.predict,
    )
    monkeypatch.setitem(FAMILIES, "pooled", Family(
        "pooled", "pooled", "", "test:x", ("num_layers",), builtin_config=FAMILIES["demo"].builtin_config, resolution_multiple=2,
        default_resolution=FAMILIES["demo"].default_resolution))
    monkeypatch.setattr("trainer.train.implementation", lambda name: pooled)
    code, events, _ = run(tmp_path, tiny_model_dir, model_family="pooled")
    assert code == 2
    error = next(e for e in events if e["event"] == "error")
    assert "LayerSync cannot use this model's hidden states" in error["message"] and "(2, 32)" in error["message"]
    assert not any(e["event"] == "metric" for e in events)


def test_a_crash_ends_the_run_failed_with_its_reason(tmp_path, tiny_model_dir, monkeypatch):
    def broken_predict(model, x, t, cond):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr("trainer.train.implementation", lambda name: FamilyImplementation(
        demo.load_model, demo.blocks, broken_predict, demo.load_data))
    code, events, _ = run(tmp_path, tiny_model_dir, layersync_enabled=False)
    assert code == 1
    assert events[-1] == {**events[-1], "event": "end", "status": "failed", "reason": "RuntimeError: the GPU caught fire"}


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_cancelled(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = fast_config(tiny_model_dir, out, max_train_steps=100000, validation_steps=0, checkpointing_steps=0)
    path = write_config(tmp_path / "run.json", config)
    process = subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(path), "--no-progress"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def trains() -> bool:
        assert process.poll() is None, f"the trainer exited: {process.communicate()[1][-2000:]}"
        return (out / "events.jsonl").exists() and any(e["event"] == "metric" for e in read_events(out))

    try:
        wait_until(trains, what="the trainer to write a metric", interval=0.2)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=PATIENCE_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    events = read_events(out)
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "cancelled" and end["step"] < 100000
    assert events[-2]["event"] == "log" and "resume" in events[-2]["message"]
    checkpoint = [e for e in events if e["event"] == "checkpoint"][-1]
    assert checkpoint["step"] == end["step"]
    state = json.loads((out / checkpoint["path"] / "state.json").read_text())
    assert state["step"] == end["step"] and state.keys() == {"step", "layersync_guard"}  # the collapse guard's state too


def test_a_second_ctrl_c_stops_at_once_but_a_repeated_sigterm_does_not():
    from trainer.train import StopRequest

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # a retried cancel: still a clean stop after the step
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_launch_whose_processes_cannot_share_the_batch_is_refused_before_training(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # torchrun with 3 ranks; the batch of 8 does not split over them
    code, events, out = run(tmp_path, tiny_model_dir)
    assert code == 2
    assert "does not split over the 3 launched processes" in events[-1]["reason"] and not (out / "checkpoints").exists()


def test_the_fp16_loss_scale_is_checkpointed_and_restored(tmp_path):
    from trainer.checkpoint import load_checkpoint, save_checkpoint
    from trainer.models.demo_dit import DemoDiT

    model = DemoDiT(hidden_size=32, num_layers=2, num_attention_heads=2)
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once a loss has been scaled
    scaler.update(new_scale=77.0)
    path = save_checkpoint(tmp_path, 3, model, optimizer, {}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0)
    assert load_checkpoint(path, model, optimizer, scaler=fresh) == 3
    assert fresh.get_scale() == 77.0


@pytest.mark.parametrize("overrides, absent", [
    ({"layersync_pairs": [[4, 12]], "max_grad_norm": 0.0}, {"grad_norm"}),
    ({"layersync_enabled": False}, {"layersync_similarity", "layersync_lambda", "layersync_span_update"}),
    ({"layersync_teacher_block": 9}, {"layersync_span_update"}),  # 8 → 9: no block between them
])
def test_every_metric_event_has_every_key_and_none_for_what_is_off(tmp_path, tiny_model_dir, overrides, absent):
    _, events, _ = run(tmp_path, tiny_model_dir, max_train_steps=4, validation_steps=0, checkpointing_steps=0, **overrides)
    metrics = [e for e in events if e["event"] == "metric"]
    pairs = {"layersync_similarity/8-16", "layersync_similarity/4-12"} if "layersync_pairs" in overrides else set()
    assert len(metrics) == 2
    for m in metrics:
        assert m.keys() == METRIC_KEYS | {"event", "time", "grad_norm"} | pairs
        assert all(m[key] is None for key in absent) and all(m[key] is not None for key in m.keys() - absent)
    if pairs:
        assert metrics[0]["layersync_similarity"] == pytest.approx(
            (metrics[0]["layersync_similarity/8-16"] + metrics[0]["layersync_similarity/4-12"]) / 2)
    elif overrides.get("layersync_enabled") is False:
        assert all(m["layersync_loss"] == 0 and m["loss"] == m["diffusion_loss"] for m in metrics)


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_what_validation_samples_with_is_built_once_and_released_when_the_run_ends(tmp_path, tiny_model_dir, monkeypatch, outcome):
    import gc
    import weakref

    class Pipeline:
        pass

    built = []

    def sample(config, model, data, device, path, samplers):
        pipe = samplers.get("pipeline", Pipeline)
        if not built or built[-1]() is not pipe:
            built.append(weakref.ref(pipe))
        if outcome == "failed":
            raise RuntimeError("the sampler ran out of memory")
        return demo.sample(config, model, data, device, path, samplers)

    monkeypatch.setattr("trainer.train.implementation", lambda name: FamilyImplementation(
        demo.load_model, demo.blocks, demo.predict, demo.load_data, sample=sample))
    code, events, _ = run(tmp_path, tiny_model_dir, checkpointing_steps=0)
    assert (code, events[-1]["status"]) == ((0, "completed") if outcome == "completed" else (1, "failed"))
    assert len([e for e in events if e["event"] == "sample"]) == (2 if outcome == "completed" else 0)
    gc.collect()
    assert len(built) == 1 and built[0]() is None
