"""Damage done for real to real processes: the server SIGKILLed mid-run and restarted, a worker
SIGKILLed, a run cancelled, failed and cancelled runs resumed, two runs queued on one slot, a run
folder that cannot be written, a full disk. The server is `python -m app.cli serve` on 127.0.0.1
and the workers are the real trainer on a tiny demo model."""

import json
import os
import shutil
import signal
import sys

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.utils.factories import fast_config
from tests.utils.server import app_settings, stored_run, wait_for
from tests.utils.server_process import ServerProcess
from tests.utils.waiting import wait_until
from trainer.events import read_events

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    server = ServerProcess(tmp_path / "data", model_roots=[tiny_model_dir.parent])
    server.start()
    try:
        yield server
    finally:
        server.close()  # the server and every worker it started, whatever the test left running


def config(tiny_model_dir, steps: int, **overrides) -> dict:
    """A run with a point every step and a checkpoint every 10, no samples (they cost time)."""
    values = dict(max_train_steps=steps, logging_steps=1, validation_steps=0, checkpointing_steps=10)
    return fast_config(tiny_model_dir, "ignored", **{**values, **overrides})


def losses(server: ServerProcess, run_id: int) -> dict[int, float]:
    series = server.http.get(f"/api/runs/{run_id}/metrics", params={"names": "loss", "max_points": 100_000}).json()
    loss = series["series"]["loss"]
    assert len(set(loss["steps"])) == len(loss["steps"])  # a step once
    return dict(zip(loss["steps"], loss["values"], strict=True))


def last_step(folder: str) -> int:
    """The last step the run's worker wrote to its events file, whoever follows it."""
    return max((event["step"] for event in read_events(folder) if event["event"] == "metric"), default=0)


def metric_events(server: ServerProcess, run_id: int) -> list[tuple[int, int]]:
    """(event id, step) of each training metric in the run's replayed event stream."""
    frames = server.http.get(f"/api/runs/{run_id}/events", params={"since": 0}).text.split("\n\n")
    found = []
    for frame in frames:
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if fields.get("event") == "metric" and "loss" in (data := json.loads(fields["data"])):
            found.append((int(fields["id"]), data["step"]))
    return found


def test_a_server_killed_mid_run_takes_the_run_back_and_the_queue_survives(server, tiny_model_dir):
    first = server.http.post("/api/runs", json=config(tiny_model_dir, 200, checkpointing_steps=0)).json()
    second = server.http.post("/api/runs", json=config(tiny_model_dir, 5)).json()
    third = server.http.post("/api/runs", json=config(tiny_model_dir, 5)).json()
    running = server.wait(first["id"], lambda run: run["step"] >= 10)
    assert [server.run(run["id"])["queue_position"] for run in (second, third)] == [1, 2]  # one slot: they wait
    server.kill()
    folder = server.stored(running["id"]).output_dir
    at_kill = last_step(folder)
    # the worker trains on, unfollowed: it writes steps after the server's death
    wait_until(lambda: last_step(folder) > at_kill, what=f"the worker to write a step past {at_kill} with no server")
    server.start()
    assert server.run(first["id"])["status"] in ("running", "completed")  # adopted (or ended meanwhile), not failed
    assert [server.run(run["id"])["queue_position"] for run in (second, third)] == [1, 2]  # still queued, in order
    done = server.wait_ended(first["id"])
    assert done["status"] == "completed" and done["step"] == 200, done
    assert sorted(losses(server, first["id"])) == list(range(1, 201))  # every point, none lost over the gap
    assert [step for _, step in metric_events(server, first["id"])] == list(range(1, 201))  # each event once
    after, last = server.wait_ended(second["id"]), server.wait_ended(third["id"])
    assert after["status"] == last["status"] == "completed"
    assert done["finished_at"] <= after["started_at"] and after["finished_at"] <= last["started_at"]  # FIFO, one at a time


def test_a_killed_worker_fails_its_run_the_queue_moves_on_and_resume_matches_an_unbroken_run(server, tiny_model_dir):
    broken = server.http.post("/api/runs", json=config(tiny_model_dir, 40)).json()
    unbroken = server.http.post("/api/runs", json=config(tiny_model_dir, 40)).json()  # same seed: the reference
    server.wait(broken["id"], lambda run: run["step"] >= 15)  # past its checkpoint at 10
    pid = server.stored(broken["id"]).pid
    os.killpg(pid, signal.SIGKILL)
    failed = server.wait_ended(broken["id"])
    # only the worker's parent learns the signal that ended it: this server noticed the death itself
    assert failed["status"] == "failed" and "killed by SIGKILL" in failed["error"], failed
    assert "killed by SIGKILL" in server.http.get(f"/runs/{broken['id']}").text  # the run page says why
    assert server.wait_ended(unbroken["id"])["status"] == "completed"  # the queue moved on

    resumed = server.http.post(f"/api/runs/{broken['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    assert resumed.json()["config"]["resume_from_checkpoint"] == "latest"
    done = server.wait_ended(broken["id"])
    assert done["status"] == "completed" and done["error"] is None, done
    assert "resumed from" in server.http.get(f"/api/runs/{broken['id']}/log").text  # from a checkpoint, not step 0
    again, reference = losses(server, broken["id"]), losses(server, unbroken["id"])
    assert sorted(again) == list(range(1, 41))  # the repeated steps overwrote their points
    assert again == pytest.approx(reference, rel=1e-5)  # the same batches and noise, the same optimizer state
    ids = [event_id for event_id, _ in metric_events(server, broken["id"])]
    assert ids == sorted(set(ids))  # event ids only grow, across the kill and the resume
    conflict = server.http.post(f"/api/runs/{broken['id']}/resume")
    assert conflict.status_code == 409 and "only a failed or cancelled run" in conflict.json()["detail"]


def test_cancel_checkpoints_and_resume_continues_where_it_stopped(server, tiny_model_dir):
    run = server.http.post("/api/runs", json=config(tiny_model_dir, 200)).json()
    server.wait(run["id"], lambda r: r["step"] >= 15)
    assert server.http.post(f"/api/runs/{run['id']}/cancel").json()["cancel_requested"]
    cancelled = server.wait_ended(run["id"])
    assert cancelled["status"] == "cancelled" and cancelled["step"] < 200, cancelled
    stopped_at = cancelled["step"]
    # the worker stopped on the SIGTERM itself, after its step; it was not killed once the grace ran out
    assert cancelled["error"] is None, cancelled
    assert f"stopped on request after step {stopped_at}" in server.http.get(f"/api/runs/{run['id']}/log").text
    assert cancelled["last_checkpoint"] == f"checkpoints/step_{stopped_at:07d}"  # the step it stopped at is kept
    server.http.post(f"/api/runs/{run['id']}/resume")
    done = server.wait_ended(run["id"])
    assert done["status"] == "completed" and done["step"] == 200
    resumed_from = f"{server.stored(run['id']).output_dir}/checkpoints/step_{stopped_at:07d}"
    assert f"resumed from {resumed_from}" in server.http.get(f"/api/runs/{run['id']}/log").text
    assert sorted(losses(server, run["id"])) == list(range(1, 201))


def test_a_queued_run_is_cancelled_at_once(server, tiny_model_dir):
    server.http.post("/api/runs", json=config(tiny_model_dir, 100))
    queued = server.http.post("/api/runs", json=config(tiny_model_dir, 5)).json()
    answer = server.http.post(f"/api/runs/{queued['id']}/cancel").json()
    assert answer["status"] == "cancelled" and answer["queue_position"] is None
    assert server.stored(queued["id"]).pid is None  # no worker was started for it


# ---- the disk, and a crash inside the trainer: the server in-process, the worker real -------------

@pytest.fixture
def real_slot(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("LAYERSYNC_MODEL_ROOTS", json.dumps([str(tiny_model_dir.parent)]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in ServerProcess: no spinning threads on a busy machine
    return app_settings(tmp_path / "data", worker_slots=1, worker_command=[sys.executable, "-m", "trainer"])


def test_a_run_folder_that_cannot_be_written_fails_the_run_with_that_reason(real_slot, tiny_model_dir):
    real_slot.runs_dir.mkdir(parents=True)
    (real_slot.runs_dir / "1").write_text("a file where the run's folder must go")  # root ignores chmod; this it cannot
    with TestClient(create_app(real_slot)) as client:
        run = client.post("/api/runs", json=config(tiny_model_dir, 5)).json()
        failed = wait_for(client, run["id"])
        folder = stored_run(client.app.state.engine, run["id"]).output_dir
    assert failed["status"] == "failed" and f"the run folder {folder} cannot be written" in failed["error"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_a_full_disk_fails_the_run_with_that_reason(real_slot, tiny_model_dir):
    folder = real_slot.runs_dir / "1"
    folder.mkdir(parents=True)
    (folder / "events.jsonl").symlink_to("/dev/full")  # every write to it: ENOSPC, as on a full disk
    with TestClient(create_app(real_slot)) as client:
        run = client.post("/api/runs", json=config(tiny_model_dir, 5)).json()
        failed = wait_for(client, run["id"])
    assert failed["status"] == "failed" and "No space left on device" in failed["error"], failed


def test_an_exception_in_the_trainer_fails_the_run_with_its_message(real_slot, tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tiny_model_dir.parent / f"broken-{tmp_path.name}")
    try:
        with TestClient(create_app(real_slot)) as client:
            blocker = client.post("/api/runs", json=config(tiny_model_dir, 40)).json()  # holds the slot meanwhile
            run = client.post("/api/runs", json=config(model, 5)).json()
            (model / "diffusion_pytorch_model.safetensors").unlink()  # valid when queued, gone when it loads
            failed = wait_for(client, run["id"])
            wait_for(client, blocker["id"])
    finally:
        shutil.rmtree(model, ignore_errors=True)
    assert failed["status"] == "failed" and "no file named diffusion_pytorch_model" in failed["error"], failed
    assert "the worker exited" not in failed["error"]  # the trainer's own message, from its end event
