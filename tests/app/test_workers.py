"""Whether a worker lives, told from real processes: a pid taken over by another process and a
zombie are not the worker; a worker this server started reports how it ended."""

import os
import signal
import subprocess
import sys
import time

import pytest

from app import workers
from app.workers import exit_code, launch, pid_alive, write_config

needs_proc = pytest.mark.skipif(not workers.HAS_PROC, reason="start times are read from /proc (Linux)")


@needs_proc
def test_a_pid_now_held_by_another_process_is_not_the_worker():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state, started = workers._proc_stat(other.pid)
        assert state != "Z"
        assert pid_alive(other.pid, started)  # the process that was recorded
        assert not pid_alive(other.pid, started - 1)  # same pid, another start time: another process
        assert pid_alive(other.pid)  # nothing recorded (an older database): the pid alone decides
    finally:
        other.kill()
        other.wait()


@needs_proc
def test_an_unreaped_worker_is_dead():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while workers._proc_stat(zombie.pid)[0] != "Z":  # exited; its parent (this test) has not reaped it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        assert not pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_a_killed_worker_reports_the_signal_and_its_group_is_signalled(tmp_path):
    config_path = write_config(tmp_path / "run", {"max_train_steps": 1})
    worker = launch([sys.executable, "-c", "import time; time.sleep(30)"], config_path=config_path, device="cpu")
    try:
        assert os.getpgid(worker.pid) == worker.pid  # its own process group: a cancel reaches all it spawned
        assert pid_alive(worker.pid, worker.started)
        workers.stop_worker(worker.pid, worker.started, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(worker.pid, worker.started):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert exit_code(worker.pid) == -signal.SIGKILL
    finally:
        if pid_alive(worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)
