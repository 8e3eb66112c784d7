"""Whether a worker lives, told from real processes: a pid taken over by another process and a
zombie are not the worker; a worker this server started reports how it ended."""

import os
import signal
import subprocess
import sys
import time

import psutil

from app import workers
from app.workers import STARTED_TOLERANCE_MS, Workers, pid_alive, start_time, write_config


def test_a_pid_now_held_by_another_process_is_not_the_worker():
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = start_time(other.pid)
        assert abs(started - time.time() * 1000) < 60_000  # milliseconds since the epoch, as stored
        assert pid_alive(other.pid, started)  # the process that was recorded
        assert pid_alive(other.pid, started + STARTED_TOLERANCE_MS // 2)  # the clock moved a little meanwhile
        assert not pid_alive(other.pid, started - 60_000)  # same pid, started a minute apart: another process
        assert pid_alive(other.pid)  # nothing recorded: the pid alone decides
        assert pid_alive(other.pid, 123_456)  # an older server's clock ticks after boot: the pid alone decides
    finally:
        other.kill()
        other.wait()
    assert not pid_alive(other.pid, started) and start_time(other.pid) is None


def test_an_unreaped_worker_is_dead():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 600
    while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:  # exited; its parent (this test) has not reaped it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        assert not pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_a_killed_worker_reports_the_signal_and_its_group_is_signalled(tmp_path):
    config_path = write_config(tmp_path / "run", {"max_train_steps": 1})
    ours = Workers()
    worker = ours.launch([sys.executable, "-c", "import time; time.sleep(30)"], config_path=config_path, device="cpu")
    try:
        assert os.getpgid(worker.pid) == worker.pid  # its own process group: a cancel reaches all it spawned
        assert ours.alive(worker.pid, worker.started)
        workers.stop_worker(worker.pid, worker.started, signal.SIGKILL)
        deadline = time.monotonic() + 600
        while ours.alive(worker.pid, worker.started):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ours.exit_code(worker.pid) == -signal.SIGKILL
        assert ours.exit_code(worker.pid) is None  # told once
    finally:
        if pid_alive(worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)


def test_each_server_keeps_its_own_workers(tmp_path):
    config_path = write_config(tmp_path / "run", {"max_train_steps": 1})
    ours, theirs = Workers(), Workers()
    worker = ours.launch([sys.executable, "-c", "import sys; sys.exit(7)"], config_path=config_path, device="cpu")
    deadline = time.monotonic() + 600
    while ours.alive(worker.pid, worker.started):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert theirs.exit_code(worker.pid) is None and ours.exit_code(worker.pid) == 7
