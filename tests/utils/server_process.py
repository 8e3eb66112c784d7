"""The server as a real process (``python -m app.cli serve`` on 127.0.0.1), so a test can SIGKILL it
and start it again on the same data dir, and clean up the detached workers it leaves behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.models import FINISHED
from app.workers import pid_alive

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
            "LAYERSYNC_WORKER_SLOTS": str(worker_slots),
            "LAYERSYNC_MODEL_ROOTS": json.dumps([str(root) for root in model_roots]),
        }
        self.process: subprocess.Popen | None = None
        self.worker_pids: set[int] = set()  # every worker seen, killed in close()
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> None:
        log = open(self.data_dir.parent / "server.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/api/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {(self.data_dir.parent / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine or the OOM killer takes it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def run(self, run_id: int) -> dict:
        run = self.http.get(f"/api/runs/{run_id}").json()
        if run.get("pid"):
            self.worker_pids.add(run["pid"])
        return run

    def wait(self, run_id: int, until, timeout: float = 120.0) -> dict:
        """Poll until ``until(run)`` holds (or a status in FINISHED when ``until`` is a tuple of statuses)."""
        check = until if callable(until) else (lambda run: run["status"] in until)
        deadline = time.monotonic() + timeout
        while not check(run := self.run(run_id)):
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not get there within {timeout} s: {run}")
            time.sleep(0.1)
        return run

    def wait_ended(self, run_id: int, timeout: float = 120.0) -> dict:
        return self.wait(run_id, FINISHED, timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        for pid in self.worker_pids:
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
        self.http.close()
