"""The server as a real process (``python -m app.cli serve`` on 127.0.0.1), so a test can SIGKILL it
and start it again on the same data dir, and clean up the detached workers it leaves behind."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from app.db import make_engine
from app.lifecycle import FINISHED
from app.workers import pid_alive
from tests.utils.server import stored_run
from tests.utils.waiting import PATIENCE_S, wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """One data dir and port; ``start`` and ``kill`` as often as a test likes; ``close`` ends it all."""

    def __init__(self, data_dir: Path, model_roots: list[Path], worker_slots: int = 1):
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | {
            "PYTHONUNBUFFERED": "1",
            # one thread per worker: OpenMP threads spin while they wait, which on a busy 2-core machine
            # slows a step from 0.03 s to seconds
            "OMP_NUM_THREADS": "1",
            # a cancelled worker that a loaded machine slows down still stops by itself, not by SIGKILL
            "LAYERSYNC_CANCEL_GRACE_SECONDS": str(PATIENCE_S),
            "LAYERSYNC_WORKER_SLOTS": str(worker_slots),
            "LAYERSYNC_MODEL_ROOTS": json.dumps([str(root) for root in model_roots]),
        }
        self.process: subprocess.Popen | None = None
        self.worker_pids: set[int] = set()  # every worker seen, killed in close()
        self.http = httpx.Client(base_url=self.url, timeout=PATIENCE_S)
        # what the API does not answer; the database the server is given (LAYERSYNC_DATABASE_URL), or its SQLite file
        self.engine = make_engine(self.env.get("LAYERSYNC_DATABASE_URL") or f"sqlite:///{data_dir / 'layersync.db'}")

    def start(self) -> None:
        log = open(self.data_dir.parent / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )

        def healthy() -> bool:
            assert self.process.poll() is None, f"the server exited: {(self.data_dir.parent / 'server.log').read_text()[-2000:]}"
            return self.http.get("/api/health").status_code == 200

        wait_until(healthy, what="the server to answer /api/health", interval=0.1, ignore=(httpx.TransportError,))

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the OOM killer takes it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=PATIENCE_S)

    def run(self, run_id: int) -> dict:
        run = self.http.get(f"/api/runs/{run_id}").json()
        self.stored(run_id)
        return run

    def stored(self, run_id: int):
        """The run's row as the server stored it (its worker's pid, its folder); notes the worker for close()."""
        row = stored_run(self.engine, run_id)
        if row is not None and row.pid:
            self.worker_pids.add(row.pid)
        return row

    def wait(self, run_id: int, until, timeout: float = PATIENCE_S) -> dict:
        """Poll until ``until(run)`` holds (or a status in FINISHED when ``until`` is a tuple of statuses)."""
        check = until if callable(until) else (lambda run: run["status"] in until)
        last: dict = {}

        def there() -> dict | None:
            nonlocal last
            last = self.run(run_id)
            return last if check(last) else None

        return wait_until(there, timeout, lambda: f"run {run_id} to get there: {last}", interval=0.1)

    def wait_ended(self, run_id: int, timeout: float = PATIENCE_S) -> dict:
        return self.wait(run_id, FINISHED, timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        for pid in self.worker_pids:
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        self.http.close()
        self.engine.dispose()
