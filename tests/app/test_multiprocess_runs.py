"""Runs of several processes: the slots they take, the torchrun launch, cancel and kill of the whole group,
and (slow) the real trainer as two gloo ranks on this CPU, run by the server."""

import os
import signal
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.workers import launcher_command, pid_alive, slots_for, stop_worker
from tests.utils.factories import SEED_SNIPPET, fast_config
from tests.utils.server import app_settings, stored_run, wait_for
from tests.utils.waiting import wait_until
from trainer.events import read_events


def test_a_run_takes_one_free_gpu_a_process_or_waits_for_them():
    gpus = ["0", "1", "2"]
    assert slots_for(["0", "1", "2"], gpus, 2) == (["0", "1"], None)
    assert slots_for(["2"], gpus, 2) == (None, None)  # waits
    assert slots_for(["1"], gpus, 1) == (["1"], None)
    # two slots a GPU (round robin): two ranks never share a GPU
    assert slots_for(["0", "1", "0", "1"], ["0", "1", "0", "1"], 2) == (["0", "1"], None)
    assert slots_for(["0", "0"], ["0", "1", "0", "1"], 2) == (None, None)
    slots, why = slots_for(["0", "1"], ["0", "1"], 4)
    assert slots is None and "num_processes 4 needs 4 GPUs" in why and "set num_processes to 2 or less" in why


def test_on_a_cpu_only_server_a_run_of_n_processes_shares_the_cpu():
    assert slots_for(["cpu"], ["cpu"], 2) == (["cpu"], None)  # the one CPU slot: both ranks on it
    assert slots_for(["cpu", "cpu", "cpu"], ["cpu"] * 3, 2) == (["cpu", "cpu"], None)
    assert slots_for(["cpu"], ["cpu"] * 3, 2) == (None, None)


def test_the_worker_command_runs_under_torchrun_standalone():
    assert launcher_command(["/usr/bin/python3", "-m", "trainer"], 2) == [
        "/usr/bin/python3", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--shutdown_timeout", "600", "-m", "trainer"]
    assert launcher_command(["nice", "-n", "10", "python", "-m", "trainer"], 4)[:5] == ["nice", "-n", "10", "python", "-m"]
    with pytest.raises(OSError, match="names no Python interpreter"):
        launcher_command(["/opt/my-worker"], 2)


def test_a_kill_reaches_the_ranks_a_launcher_started_in_sessions_of_their_own(tmp_path):
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
              "print(child.pid, flush=True); time.sleep(600)")
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)
    rank = int(launcher.stdout.readline())
    try:
        stop_worker(launcher.pid, sig=signal.SIGKILL)
        launcher.wait()
        wait_until(lambda: not pid_alive(rank), what="the rank in its own session to be killed too")
    finally:
        for pid in (launcher.pid, rank):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_two_process_run_holds_two_gpus_and_the_next_run_waits_until_it_is_cancelled(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    settings = app_settings(tmp_path / "data", worker_slots=2, gpus="0,1")
    with TestClient(create_app(settings)) as client:
        wide = client.post("/api/runs", json=dict(SEED_SNIPPET, num_processes=2, train_batch_size=8)).json()
        narrow = client.post("/api/runs", json=dict(SEED_SNIPPET)).json()
        wait_until(lambda: client.get(wide["url"]).json()["step"], what="the two-process run to train")
        assert stored_run(client.app.state.engine, wide["id"]).slot == "0,1"
        assert client.get(narrow["url"]).json()["status"] == "queued"  # both GPUs are the first run's
        log = settings.runs_dir / str(wide["id"]) / "worker.log"
        wait_until(lambda: "fake worker rank 1, CUDA_VISIBLE_DEVICES=0,1" in log.read_text(), what="rank 1 to start")
        assert "CUDA_VISIBLE_DEVICES=0,1" in log.read_text()
        pid = stored_run(client.app.state.engine, wide["id"]).pid
        client.post(f"{wide['url']}/cancel")
        assert wait_for(client, wide["id"])["status"] == "cancelled"  # SIGTERM through the launcher to rank 0
        wait_until(lambda: not pid_alive(pid), what="the launcher to exit")
        client.post(f"{narrow['url']}/cancel")
        assert wait_for(client, narrow["id"])["status"] == "cancelled"


def test_a_run_of_more_processes_than_the_server_has_gpus_fails_and_the_queue_moves_on(tmp_path):
    settings = app_settings(tmp_path / "data", worker_slots=2, gpus="0,1")
    with TestClient(create_app(settings)) as client:
        wide = client.post("/api/runs", json=dict(SEED_SNIPPET, num_processes=4, train_batch_size=8)).json()
        narrow = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=3)).json()
        failed = wait_for(client, wide["id"])
        assert failed["status"] == "failed" and "num_processes 4 needs 4 GPUs" in failed["error"]
        assert wait_for(client, narrow["id"])["status"] == "completed"


@pytest.mark.slow
def test_the_server_trains_a_two_process_run_on_the_cpu_and_cancels_another_with_a_checkpoint(tmp_path, tiny_model_dir):
    settings = app_settings(tmp_path / "data", worker_slots=1, gpus="", worker_command=[sys.executable, "-m", "trainer"],
                            model_roots=[tiny_model_dir.parent])
    with TestClient(create_app(settings)) as client:
        config = fast_config(tiny_model_dir, tmp_path / "ignored", max_train_steps=4, validation_steps=0, num_processes=2)
        del config["output_dir"]
        done = client.post("/api/runs", json=config).json()
        assert wait_for(client, done["id"])["status"] == "completed", (settings.runs_dir / str(done["id"]) / "worker.log").read_text()
        events = read_events(settings.runs_dir / str(done["id"]))
        assert [e["step"] for e in events if e["event"] == "metric" and "loss" in e] == [2, 4]
        assert [e.get("world_size") for e in events if e["event"] == "status" and "world_size" in e] == [2, 2]

        long = client.post("/api/runs", json=dict(config, max_train_steps=100000, checkpointing_steps=0)).json()
        wait_until(lambda: client.get(long["url"]).json()["step"], what="the long run to train")
        client.post(f"{long['url']}/cancel")
        cancelled = wait_for(client, long["id"])
    assert cancelled["status"] == "cancelled", cancelled
    events = read_events(settings.runs_dir / str(long["id"]))
    assert events[-1]["status"] == "cancelled" and [e["step"] for e in events if e["event"] == "checkpoint"] == [events[-1]["step"]]
