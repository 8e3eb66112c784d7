"""The trainer under torchrun on the CPU (gloo ranks on 127.0.0.1), and gradient accumulation.

Tolerance: N ranks at a global batch B train on the same examples as one process at B; their losses are
averaged over the ranks (float32 sums of equal shares), so they equal the single process's within rel 1e-5
(here they are usually bit-identical; a BLAS splitting a product differently may move the last digits).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.utils.factories import fast_config, write_config
from tests.utils.server_process import free_port
from tests.utils.waiting import PATIENCE_S, wait_until
from trainer.config import validate_config
from trainer.distributed import Distributed, micro_batches
from trainer.events import read_events
from trainer.train import train

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# loopback only; one thread a rank (two ranks on a 2-core machine)
ENV = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}


def losses(events) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "metric" and "loss" in e}


def single(tmp_path, tiny_model_dir, name, **overrides) -> list[dict]:
    out = tmp_path / name
    assert train(validate_config(fast_config(tiny_model_dir, out, **overrides)), out) == 0
    return read_events(out)


def launch(tmp_path, name, config: dict, *flags: str, wait=True) -> subprocess.Popen:
    path = write_config(tmp_path / f"{name}.json", config)
    log = open(tmp_path / f"{name}.log", "wb")
    process = subprocess.Popen([*TORCHRUN, *flags, "-m", "trainer", "--config", str(path), "--no-progress"], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, env=os.environ | ENV, start_new_session=True)
    if wait:
        finish(process, tmp_path / f"{name}.log")
    return process


def finish(process: subprocess.Popen, log: Path, expected: int = 0) -> None:
    try:
        process.wait(timeout=PATIENCE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == expected, log.read_text()[-3000:]


@pytest.mark.slow
def test_two_ranks_train_as_one_process_at_the_same_global_batch(tmp_path, tiny_model_dir):
    overrides = dict(max_train_steps=6, train_batch_size=4, gradient_accumulation_steps=2, validation_steps=3,
                     checkpointing_steps=3)
    out = tmp_path / "two"
    launch(tmp_path, "two", fast_config(tiny_model_dir, out, **overrides), "--standalone", "--nproc_per_node", "2")
    reference = single(tmp_path, tiny_model_dir, "one", **overrides)
    events = read_events(out)
    assert losses(events) == pytest.approx(losses(reference), rel=1e-5)
    # one events file, each step once, written by rank 0 alone
    steps = [e["step"] for e in events if e["event"] == "metric" and "loss" in e]
    assert steps == [2, 4, 6]
    assert [e["step"] for e in events if e["event"] == "sample"] == [3, 6]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [3, 6]
    assert [e["event"] for e in events].count("end") == 1 and events[-1]["status"] == "completed"
    assert [e.get("world_size") for e in events if e["event"] == "status"] == [2, 2]
    assert any(e["event"] == "log" and "world size 2: 2 processes (gloo, ddp), 2 examples each" in e["message"] for e in events)
    # every checkpoint checked the ranks' weights equal (else the run fails); rank 0's equal the single process's
    mine = torch.load(out / "checkpoints/step_0000006/optimizer.pt", weights_only=True)["state"]
    theirs = torch.load(tmp_path / "one/checkpoints/step_0000006/optimizer.pt", weights_only=True)["state"]
    for index in theirs:
        torch.testing.assert_close(mine[index]["exp_avg"], theirs[index]["exp_avg"], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_sigterm_to_the_launcher_cancels_every_rank_after_one_step_with_a_checkpoint_then_one_process_resumes(
        tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = fast_config(tiny_model_dir, out, max_train_steps=100000, validation_steps=0, checkpointing_steps=0, logging_steps=1)
    process = launch(tmp_path, "run", config, "--standalone", "--nproc_per_node", "2", wait=False)

    def trains() -> bool:
        assert process.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        return (out / "events.jsonl").exists() and any(e["event"] == "metric" for e in read_events(out))

    wait_until(trains, what="the ranks to train a step", interval=0.2)
    os.killpg(process.pid, signal.SIGTERM)  # what the server's cancel does: the launcher's process group
    try:
        process.wait(timeout=PATIENCE_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    events = read_events(out)
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "cancelled", (tmp_path / "run.log").read_text()[-3000:]
    stopped = end["step"]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [stopped]
    assert json.loads((out / f"checkpoints/step_{stopped:07d}/state.json").read_text())["step"] == stopped

    # resume at world size 1: the run goes on as if it had never stopped
    total = stopped + 2
    resumed = validate_config(fast_config(tiny_model_dir, out, max_train_steps=total, validation_steps=0,
                                          checkpointing_steps=0, logging_steps=1, resume_from_checkpoint="latest"))
    assert train(resumed, out) == 0
    whole = single(tmp_path, tiny_model_dir, "whole", max_train_steps=total, validation_steps=0, checkpointing_steps=0,
                   logging_steps=1)
    assert losses(read_events(out)) == pytest.approx(losses(whole), rel=1e-5)


@pytest.mark.slow
def test_two_nodes_on_loopback_train_as_one_process(tmp_path, tiny_model_dir):
    out = tmp_path / "nodes"
    overrides = dict(max_train_steps=4, validation_steps=0, checkpointing_steps=4)
    config = fast_config(tiny_model_dir, out, **overrides)
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [launch(tmp_path, f"node{rank}", config, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "test", wait=False)
             for rank in (0, 1)]
    for rank, node in enumerate(nodes):
        finish(node, tmp_path / f"node{rank}.log")
    events = read_events(out)
    assert [e.get("world_size") for e in events if e["event"] == "status"] == [2, 2]
    assert losses(events) == pytest.approx(losses(single(tmp_path, tiny_model_dir, "one", **overrides)), rel=1e-5)


@pytest.mark.slow
def test_fsdp_shards_a_full_fine_tune_and_its_checkpoint_resumes_in_one_process(tmp_path, tiny_model_dir):
    overrides = dict(max_train_steps=4, validation_steps=4, checkpointing_steps=2, layersync_enabled=False)
    out = tmp_path / "fsdp"
    launch(tmp_path, "fsdp", fast_config(tiny_model_dir, out, distributed="fsdp", **overrides),
           "--standalone", "--nproc_per_node", "2")
    reference = single(tmp_path, tiny_model_dir, "one", **overrides)
    events = read_events(out)
    assert losses(events) == pytest.approx(losses(reference), rel=1e-4)
    assert any(e["event"] == "log" and "(gloo, fsdp)" in e["message"] for e in events)
    # the sharded run's checkpoint is the single-process layout: one process resumes it and goes on as the reference
    assert (out / "checkpoints/step_0000002/transformer/config.json").is_file()
    import shutil

    shutil.rmtree(out / "checkpoints/step_0000004")
    resumed = validate_config(fast_config(tiny_model_dir, out, resume_from_checkpoint="latest", **overrides))
    assert train(resumed, out) == 0
    after = read_events(out)
    start = max(i for i, e in enumerate(after) if e["event"] == "status" and e["status"] == "starting")
    assert losses(after[start:]) == pytest.approx({s: v for s, v in losses(reference).items() if s > 2}, rel=1e-4)


# ---- gradient accumulation (one process) ---------------------------------------------------------------


def first_moment(out: Path) -> dict[int, torch.Tensor]:
    """AdamW's first moment after one step is (1 − β1) · the step's gradient: the gradient, read from the checkpoint."""
    state = torch.load(out / "checkpoints/step_0000001/optimizer.pt", weights_only=True)["state"]
    return {index: value["exp_avg"] / 0.1 for index, value in state.items()}


def test_four_micro_batches_of_two_give_the_gradients_of_one_batch_of_eight(tmp_path, tiny_model_dir):
    one_step = dict(max_train_steps=1, validation_steps=0, max_grad_norm=0.0, logging_steps=1)
    whole = single(tmp_path, tiny_model_dir, "whole", train_batch_size=8, **one_step)
    accumulated = single(tmp_path, tiny_model_dir, "accumulated", train_batch_size=2, gradient_accumulation_steps=4, **one_step)
    single(tmp_path, tiny_model_dir, "small", train_batch_size=2, **one_step)
    g8, g42, g2 = (first_moment(tmp_path / name) for name in ("whole", "accumulated", "small"))
    for index in g8:
        torch.testing.assert_close(g42[index], g8[index], rtol=1e-4, atol=1e-8)
    assert any(not torch.allclose(g2[i], g8[i], rtol=1e-2) for i in g8)  # a batch of 2 alone is another gradient
    metric = lambda events, key: [e[key] for e in events if e["event"] == "metric" and "loss" in e]  # noqa: E731
    for key in ("loss", "diffusion_loss", "layersync_loss", "layersync_similarity"):
        assert metric(accumulated, key) == pytest.approx(metric(whole, key), rel=1e-5)
    assert len(metric(accumulated, "loss")) == 1  # one metric event per optimizer step, not per micro-batch


def test_micro_batches_split_the_drawn_batch_in_order_and_each_over_the_ranks():
    def rows(rank, world, parts):
        return [(part.rows.start, part.rows.stop, part.last)
                for part in micro_batches(8, parts, Distributed(rank=rank, world_size=world))]

    assert rows(0, 1, 1) == [(0, 8, True)]
    assert rows(0, 1, 4) == [(0, 2, False), (2, 4, False), (4, 6, False), (6, 8, True)]
    assert rows(1, 2, 2) == [(2, 4, False), (6, 8, True)]
    covered = sorted(i for r in range(2) for start, stop, _ in rows(r, 2, 2) for i in range(start, stop))
    assert covered == list(range(8))


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_with_the_choices():
    from trainer.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        validate_config({"num_processes": 3, "train_batch_size": 8})
    assert "train_batch_size 8 does not split over 3 processes" in str(caught.value) and "6 or 9" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        validate_config({"distributed": "fsdp", "model_type": "lora"})
    assert "use ddp" in str(caught.value)
