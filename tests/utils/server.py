"""Test helpers for the web app: an app on a temporary data dir, and waiting for a run's state."""

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi.testclient import TestClient

from app.main import create_app
from app.models import FINISHED
from app.settings import Settings

FAKE_WORKER = Path(__file__).resolve().parents[1] / "app" / "fake_worker.py"


def app_settings(data_dir: Path, **overrides) -> Settings:
    """No worker starts unless a test asks for slots; a worker is the fake one unless it asks for another."""
    values = dict(data_dir=data_dir, worker_slots=0, worker_command=[sys.executable, str(FAKE_WORKER)])
    values.update(overrides)
    return Settings(**values)


def wait_for(client: TestClient, run_id: int, statuses=FINISHED, timeout: float = 20.0) -> dict:
    """Poll the API until the run's status is one of ``statuses``; returns the run."""
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/api/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s: {run}")
        time.sleep(0.05)


@contextmanager
def live_server(settings: Settings):
    """The app served by uvicorn on 127.0.0.1 (a free port) in a thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
