"""Test helpers for the web app: an app on a temporary data dir, and waiting for a run's state."""

import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.lifecycle import FINISHED
from app.main import create_app
from app.models import Run
from app.settings import Settings
from tests.utils.waiting import PATIENCE_S, wait_until

FAKE_WORKER = Path(__file__).resolve().parents[1] / "app" / "fake_worker.py"


def app_settings(data_dir: Path, **overrides) -> Settings:
    """No worker starts unless a test asks for slots; a worker is the fake one unless it asks for another."""
    values = dict(data_dir=data_dir, worker_slots=0, worker_command=[sys.executable, str(FAKE_WORKER)])
    values.update(overrides)
    return Settings(**values)


def wait_for(client: TestClient, run_id: int, statuses=FINISHED, timeout: float = PATIENCE_S) -> dict:
    """Poll the API until the run's status is one of ``statuses``; returns the run."""
    last: dict = {}

    def there() -> dict | None:
        nonlocal last
        last = client.get(f"/api/runs/{run_id}").json()
        return last if last["status"] in statuses else None

    return wait_until(there, timeout, lambda: f"run {run_id} to be {' or '.join(statuses)}, still {last.get('status')}: {last}")


def stored_run(engine: Engine, run_id: int) -> Run:
    """The run's row as stored, with what the API does not answer (its worker's pid, its folder)."""
    with Session(engine) as session:
        return session.get(Run, run_id)


@contextmanager
def live_server(settings: Settings):
    """The app served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the test server stopped before it started"
        return server.started

    wait_until(started, what="the test server to start", interval=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=PATIENCE_S)
