import json
import os
import signal
import sys

import pytest
from fastapi.testclient import TestClient

from app import scheduler
from app.main import create_app
from app.workers import pid_alive, slot_devices, write_config
from tests.utils.factories import SEED_SNIPPET, fast_config
from tests.utils.server import app_settings, stored_run, wait_for
from tests.utils.waiting import wait_until


@pytest.fixture
def one_slot(tmp_path):
    return app_settings(tmp_path / "data", worker_slots=1, gpus="3")


def test_a_queued_run_is_started_trained_and_completed_by_a_worker(one_slot):
    with TestClient(create_app(one_slot)) as client:
        first = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=30)).json()
        second = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=5)).json()
        wait_for(client, first["id"], ("running",))
        assert client.get(second["url"]).json()["status"] == "queued"  # one slot: the oldest goes first
        done = wait_for(client, first["id"])
        assert done["status"] == "completed" and done["step"] == 30 and done["finished_at"]
        assert stored_run(client.app.state.engine, first["id"]).pid  # its worker's, kept for the slot's exit wait
        assert wait_for(client, second["id"])["status"] == "completed"
        series = client.get(f"{first['url']}/metrics", params={"names": "loss,layersync_similarity"}).json()["series"]
    assert series["loss"]["steps"] == list(range(1, 31)) and series["layersync_similarity"]["values"][-1] == 0.53
    folder = one_slot.runs_dir / str(first["id"])
    assert (folder / "config.json").is_file()
    assert "CUDA_VISIBLE_DEVICES=3" in (folder / "worker.log").read_text()  # the slot's GPU


def test_a_worker_that_dies_without_an_end_fails_the_run_with_its_last_output(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        failed = wait_for(client, run["id"])
        end = client.get(f"{run['url']}/events").text
    assert failed["status"] == "failed" and failed["last_metrics"] == {"loss": 1.0, "diffusion_loss": 1.0}
    assert failed["error"].startswith("the worker exited with code 1 without ending the run; its last output:")
    assert "boom: the fake worker crashed on purpose" in failed["error"]
    assert "event: end" in end and "boom" in end


def wait_for_steps(client, run) -> int:
    """The run's worker's pid, once it has reported a step (it is in its loop, its pid recorded)."""
    wait_until(lambda: client.get(run["url"]).json()["step"], what=f"run {run['id']}'s worker to report a step")
    return stored_run(client.app.state.engine, run["id"]).pid


def last_step(events_file) -> int:
    """The last step a worker wrote to its events file (0 before any; a half-written last line is skipped)."""
    steps = [0]
    for line in events_file.read_text().splitlines():
        try:
            steps.append(json.loads(line).get("step") or 0)
        except json.JSONDecodeError:
            pass
    return max(steps)


def test_cancel_stops_a_running_worker_which_ends_the_run_cancelled(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)
        answer = client.post(f"{run['url']}/cancel").json()
        assert answer["cancel_requested"] and answer["status"] == "running"
        assert wait_for(client, run["id"])["status"] == "cancelled"
    assert not pid_alive(pid)


def test_a_worker_that_ignores_the_cancel_is_killed_after_the_grace_period(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "stubborn")  # it goes on training (and writing metrics) through SIGTERM
    settings = app_settings(tmp_path / "data", worker_slots=1, gpus="3", cancel_grace_seconds=0.5)
    with TestClient(create_app(settings)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)
        client.post(f"{run['url']}/cancel")
        again = client.post(f"{run['url']}/cancel")  # no second SIGTERM: it would cut the final checkpoint short
        assert again.status_code == 409 and "a cancel was already requested" in again.json()["detail"]
        # its events restart the grace, but not past CANCEL_GRACE_LIMIT graces (3 s here); when the grace
        # ends is test_each_event_after_the_cancel_restarts_the_grace_up_to_a_limit's part
        done = wait_for(client, run["id"])
    assert done["status"] == "cancelled" and "killed (SIGKILL)" in done["error"], done  # it ignored the SIGTERM
    assert not pid_alive(pid)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def add_event(engine, run_id) -> None:
    from sqlmodel import Session

    from app.eventlog import append_event

    with Session(engine) as session:
        append_event(session, run_id=run_id, event={"event": "log", "message": "still checkpointing"})
        session.commit()


def test_each_event_after_the_cancel_restarts_the_grace_up_to_a_limit(engine, running_run, tmp_path, monkeypatch):
    killed = []
    monkeypatch.setattr(scheduler, "stop_worker", lambda pid, started, sig: killed.append(sig))
    chief = scheduler.Scheduler(engine, app_settings(tmp_path / "data", cancel_grace_seconds=10))
    chief.clock = clock = FakeClock()

    def at(now, event=False):
        if event:
            add_event(engine, running_run.id)
        clock.now = now
        chief._enforce_cancel(running_run.id, 4321, None)
        return bool(killed)

    assert not at(0) and not at(9.9)  # the cancel is seen, and waits the grace
    assert not at(15, event=True) and not at(24.9)  # the worker wrote an event at 15: another grace from there
    assert at(25.1) and killed == [signal.SIGKILL]  # then quiet for a whole grace
    killed.clear()
    busy = scheduler.Scheduler(engine, app_settings(tmp_path / "data", cancel_grace_seconds=10))
    busy.clock, chief = clock, busy
    assert not any(at(100 + t, event=True) for t in range(0, 60, 5))  # events every 5 s …
    assert at(160, event=True)  # … still killed after CANCEL_GRACE_LIMIT graces in all


def test_an_ended_runs_slot_waits_for_its_worker_to_exit(engine, tmp_path):
    from sqlmodel import Session

    from app.models import Run, utcnow

    config = write_config(tmp_path / "data" / "runs" / "1", {})
    chief = scheduler.Scheduler(engine, app_settings(tmp_path / "data", worker_slots=1, gpus="3"))
    release = tmp_path / "release"  # the worker exits once this exists: it holds its GPU until the test says
    holds = f"import os, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.01)"
    worker = chief.workers.launch([sys.executable, "-c", holds], config_path=config, device="3")
    with Session(engine) as session:
        session.add(Run(name="ended", config={}, status="completed", finished_at=utcnow(), slot="3",
                        pid=worker.pid, pid_started=worker.started))
        session.commit()
    with Session(engine) as session:
        assert chief._free_devices(session) == []  # the run wrote its end, but its worker may hold the GPU yet
    release.touch()
    wait_until(lambda: not pid_alive(worker.pid, worker.started), what="the worker to exit")
    with Session(engine) as session:
        assert chief._free_devices(session) == ["3"]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="zombies are looked up in /proc")
def test_workers_that_ended_are_reaped_each_tick(engine, tmp_path):
    config = write_config(tmp_path / "data" / "runs" / "1", {})
    chief = scheduler.Scheduler(engine, app_settings(tmp_path / "data"))
    worker = chief.workers.launch([sys.executable, "-c", "pass"], config_path=config, device="cpu")

    def reaped() -> bool:  # a zombie keeps its /proc entry until reaped
        chief.tick()
        return not os.path.exists(f"/proc/{worker.pid}/stat")

    wait_until(reaped, what="the ended worker to be reaped (not left a zombie)")


def test_a_worker_whose_pid_cannot_be_saved_is_killed_and_its_run_failed(tmp_path, monkeypatch):
    from sqlalchemy.exc import OperationalError
    from sqlmodel import Session

    from app.db import create_schema, make_engine
    from app.models import Run

    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    settings = app_settings(tmp_path / "data", worker_slots=1, gpus="3")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with Session(engine) as session:
        session.add(Run(id=1, name="orphan?", config={"max_train_steps": 5}, output_dir=str(settings.runs_dir / "1")))
        session.commit()
    real_append = scheduler.append_event

    def locked(session, *, run_id, event):
        if event["event"] == "status":  # the "worker started" event, in the transaction that saves the pid
            raise OperationalError("INSERT INTO runevent", {}, Exception("database is locked"))
        return real_append(session, run_id=run_id, event=event)

    monkeypatch.setattr(scheduler, "append_event", locked)
    scheduler.Scheduler(engine, settings).tick()
    with Session(engine) as session:
        run = session.get(Run, 1)
    engine.dispose()
    assert run.status == "failed" and "could not record it (" in run.error and "database is locked" in run.error
    wait_until(lambda: not pid_alive(run.pid, run.pid_started), what="the worker to be killed (not left running)")


def test_a_restarted_server_takes_its_running_worker_back(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)
        followed = client.get(run["url"]).json()["step"]
    assert pid_alive(pid)  # the worker outlives the server
    events = one_slot.runs_dir / str(run["id"]) / "events.jsonl"
    wait_until(lambda: last_step(events) > followed, what="the worker to write metrics while no server follows it")
    with TestClient(create_app(one_slot)) as client:
        step = client.get(run["url"]).json()["step"]
        wait_until(lambda: client.get(run["url"]).json()["step"] > step, what="the restarted server to follow the worker")
        client.post(f"{run['url']}/cancel")
        assert wait_for(client, run["id"])["status"] == "cancelled"
        steps = client.get(f"{run['url']}/metrics", params={"names": "loss", "max_points": 100_000}).json()["series"]["loss"]["steps"]
    assert steps == list(range(1, len(steps) + 1))  # nothing lost, nothing twice across the restart


def test_slots_follow_the_gpus_or_one_cpu():
    assert slot_devices(None, "0,1") == ["0", "1"]
    assert slot_devices(1, "0,1") == ["0"]
    assert slot_devices(3, "0,1") == ["0", "1", "0"]
    assert slot_devices(0, "0") == []


def test_slots_without_gpus_are_one_cpu_slot(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert slot_devices(None, None) == ["cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert slot_devices(None, None) == ["2", "5"]


@pytest.mark.slow
def test_the_real_trainer_runs_a_layersync_run_end_to_end(tmp_path, tiny_model_dir):
    settings = app_settings(tmp_path / "data", worker_slots=1, worker_command=[sys.executable, "-m", "trainer"],
                            model_roots=[tiny_model_dir])  # the web app may use no other model folder
    config = fast_config(tiny_model_dir, "ignored", max_train_steps=2, logging_steps=1, validation_steps=2,
                         checkpointing_steps=0)
    with TestClient(create_app(settings)) as client:
        run = client.post("/api/runs", params={"name": "real"}, json=config).json()
        done = wait_for(client, run["id"])
        assert done["status"] == "completed", done["error"]
        folder = stored_run(client.app.state.engine, run["id"]).output_dir
        series = client.get(f"{run['url']}/metrics").json()["series"]
        sample = client.get(done["sample_url"])
    assert series["layersync_loss"]["steps"] == [1, 2] and series["val_diffusion_loss"]["steps"] == [2]
    assert all(-0.2 - 1e-6 <= value < 0 for value in series["layersync_loss"]["values"])  # −λ·similarity
    assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    assert folder == str(settings.runs_dir / str(run["id"])) and os.path.isdir(folder)
