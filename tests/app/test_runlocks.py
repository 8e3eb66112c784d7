"""Two servers on one data dir, and a run whose worker the server does not know.

Server B, started on server A's data dir, used to fail A's just-started run ("the server stopped
while starting this run's worker") while its worker trained on; a resume then started a second
worker in the same run folder. Now B refuses to start, and whichever server looks at a run never
takes it for dead while a process holds its folder's lock.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, update

from app import scheduler
from app.datadir import DataDirInUse
from app.follower import follow_live_runs
from app.main import create_app
from app.models import Run
from tests.utils.server import app_settings
from tests.utils.server_process import free_port
from tests.utils.waiting import PATIENCE_S, wait_until
from trainer.events import EVENTS_FILE
from trainer.runlock import RUN_LOCK, is_locked

ROOT = Path(__file__).resolve().parents[2]
# a process that holds a run folder's lock until its stdin closes, as a worker holds it while it trains
HOLD = ("import sys; from trainer.runlock import FolderLock, RUN_LOCK; FolderLock(sys.argv[1], RUN_LOCK).acquire(); "
        "print('locked', flush=True); sys.stdin.read()")


@pytest.mark.sqlite_only("server.lock is taken for a SQLite data dir only")
def test_a_second_server_on_the_same_data_dir_refuses_to_start(settings):
    with TestClient(create_app(settings)) as first:
        with pytest.raises(DataDirInUse) as info, TestClient(create_app(settings)):
            pass
        assert first.get("/api/health").status_code == 200  # the first one serves on
    message = str(info.value)
    assert f"the data dir {settings.data_dir} is in use by another LayerSync server (pid {os.getpid()})" in message
    assert f"Stop that server (kill {os.getpid()}), or start this one on another data dir (--data-dir" in message
    with TestClient(create_app(settings)) as again:  # the first one stopped: its lock went with it
        assert again.get("/api/health").status_code == 200


def test_servers_on_different_data_dirs_run_side_by_side(tmp_path):
    with TestClient(create_app(app_settings(tmp_path / "a"))) as a, TestClient(create_app(app_settings(tmp_path / "b"))) as b:
        assert a.get("/api/health").status_code == b.get("/api/health").status_code == 200


@pytest.mark.sqlite_only("server.lock is taken for a SQLite data dir only")
def test_layersync_serve_on_a_data_dir_in_use_says_who_holds_it_and_exits(settings):
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(settings.data_dir)]
    env = dict(os.environ, LAYERSYNC_WORKER_SLOTS="0")
    with TestClient(create_app(settings)):
        second = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
        try:
            def exited() -> bool:  # it exits, or it serves (and the test fails)
                if second.poll() is not None:
                    return True
                try:
                    served = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=PATIENCE_S).status_code
                except httpx.TransportError:
                    return False
                raise AssertionError(f"a second server started on a data dir in use (it answered {served})")

            wait_until(exited, what="the second server to exit", interval=0.1)
        finally:
            if second.poll() is None:
                second.kill()
            stderr = second.communicate(timeout=PATIENCE_S)[1]
    assert second.returncode == 1, stderr
    assert f"error: the data dir {settings.data_dir} is in use by another LayerSync server (pid {os.getpid()})" in stderr
    assert "Traceback" not in stderr


@pytest.fixture
def hold_lock():
    """``hold_lock(folder)`` starts another process that holds the folder's worker lock, and returns
    it; closing its stdin lets go. Every one is ended after the test."""
    holders = []

    def hold(folder: Path) -> subprocess.Popen:
        # a session of its own, as a worker has: a cancel signals its process group
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, start_new_session=True)
        holders.append(holder)
        assert holder.stdout.readline() == b"locked\n"
        return holder

    yield hold
    for holder in holders:
        holder.kill()
        holder.wait()


def let_go(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    holder.wait(timeout=PATIENCE_S)


def gone_pid() -> tuple[int, int]:
    """The pid and start time of a process that has exited (and was reaped)."""
    from app.workers import start_time

    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    started = start_time(process.pid)  # while it lives: it waits for its stdin to close
    process.communicate()
    return process.pid, started


@pytest.mark.parametrize("recorded", ["no pid", "a pid that is gone"])
def test_a_run_whose_worker_is_unknown_lives_while_its_folder_is_locked(engine, running_run, tmp_path, hold_lock, recorded):
    # "no pid": a server stopped between starting the worker and saving its pid (or another server
    # started it); "a pid that is gone": the recorded worker exited, another process trains in the folder
    pid, started = gone_pid() if recorded != "no pid" else (None, None)
    with Session(engine) as session:
        session.exec(update(Run).where(Run.id == running_run.id).values(pid=pid, pid_started=started))
        session.commit()
    holder = hold_lock(running_run.output_dir)
    chief = scheduler.Scheduler(engine, app_settings(tmp_path / "data"))
    events = Path(running_run.output_dir) / EVENTS_FILE
    events.write_text('{"event": "metric", "time": 1.0, "step": 5, "loss": 0.5}\n')
    chief.tick()
    assert follow_live_runs(engine) == 1  # still running, so still followed
    with Session(engine) as session:
        run = session.get(Run, running_run.id)
        assert (run.status, run.step, run.error) == ("running", 5, None)
        assert run.pid == holder.pid  # the lock's holder is now its worker, as far as this server goes
    let_go(holder)
    chief.tick()  # no worker and no lock: now it is over
    with Session(engine) as session:
        assert session.get(Run, running_run.id).status == "failed"


def test_a_cancel_reaches_the_worker_that_holds_the_folder(engine, running_run, tmp_path, hold_lock):
    from app.runs import cancel_run

    holder = hold_lock(running_run.output_dir)  # the run's pid was never saved
    chief = scheduler.Scheduler(engine, app_settings(tmp_path / "data"))
    chief.tick()
    with Session(engine) as session:
        assert session.get(Run, running_run.id).pid == holder.pid  # what the cancel signals
        assert cancel_run(session, run_id=running_run.id).cancel_requested
    assert holder.wait(timeout=PATIENCE_S) == -signal.SIGTERM  # the SIGTERM reached it
    chief.tick()
    with Session(engine) as session:
        assert session.get(Run, running_run.id).status == "cancelled"


def test_a_run_taken_for_dead_is_not_resumed_nor_deleted_while_its_worker_holds_the_folder(client, settings, hold_lock):
    output_dir = settings.runs_dir / "1"
    engine = client.app.state.engine
    with Session(engine) as session:
        # as a server that knew nothing of the lock left it: failed, while its worker trains on
        session.add(Run(id=1, name="taken for dead", config={"max_train_steps": 10}, status="failed",
                        output_dir=str(output_dir), error="the server stopped while starting this run's worker"))
        session.commit()
    holder = hold_lock(output_dir)
    for answer in (client.post("/api/runs/1/resume"), client.delete("/api/runs/1")):
        assert answer.status_code == 409, answer.text
        assert f"a worker (pid {holder.pid}) still trains in its folder {output_dir}; wait until it exits, or " \
               f"stop it (kill {holder.pid}), then try again" in answer.json()["detail"]
    assert client.get("/api/runs/1").json()["status"] == "failed"  # not queued: no second worker will start
    assert is_locked(output_dir, RUN_LOCK) and output_dir.is_dir()  # nor was its folder deleted
    let_go(holder)
    resumed = client.post("/api/runs/1/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
