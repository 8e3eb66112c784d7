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
from tests.utils.waiting import wait_until


def test_a_pid_now_held_by_another_process_is_not_the_worker():
    before = time.time() * 1000
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        started = start_time(other.pid)
        # milliseconds since the epoch, as stored: between the clock read before it and now
        assert before - STARTED_TOLERANCE_MS <= started <= time.time() * 1000 + STARTED_TOLERANCE_MS
        assert pid_alive(other.pid, started)  # the process that was recorded
        assert pid_alive(other.pid, started + STARTED_TOLERANCE_MS // 2)  # the clock moved a little meanwhile
        assert not pid_alive(other.pid, started - 60_000)  # same pid, started a minute apart: another process
        assert pid_alive(other.pid)  # nothing recorded: the pid alone decides
        assert pid_alive(other.pid, 123_456)  # an older server's clock ticks after boot: the pid alone decides
    finally:
        other.kill()
        other.communicate()
    assert not pid_alive(other.pid, started) and start_time(other.pid) is None


def test_an_unreaped_worker_is_dead():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    # exited; its parent (this test) has not reaped it
    wait_until(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, what="the process to exit",
               interval=0.02)
    try:
        assert not pid_alive(zombie.pid)
    finally:
        zombie.wait()


def test_a_killed_worker_reports_the_signal_and_its_group_is_signalled(tmp_path):
    config_path = write_config(tmp_path / "run", {"max_train_steps": 1})
    ours = Workers()
    worker = ours.launch([sys.executable, "-c", "import time; time.sleep(600)"], config_path=config_path, device="cpu")
    try:
        assert os.getpgid(worker.pid) == worker.pid  # its own process group: a cancel reaches all it spawned
        assert ours.alive(worker.pid, worker.started)
        workers.stop_worker(worker.pid, worker.started, signal.SIGKILL)
        wait_until(lambda: not ours.alive(worker.pid, worker.started), what="the killed worker to end", interval=0.02)
        assert ours.exit_code(worker.pid) == -signal.SIGKILL
        assert ours.exit_code(worker.pid) is None  # told once
    finally:
        if pid_alive(worker.pid):
            os.killpg(worker.pid, signal.SIGKILL)


def test_each_server_keeps_its_own_workers(tmp_path):
    config_path = write_config(tmp_path / "run", {"max_train_steps": 1})
    ours, theirs = Workers(), Workers()
    worker = ours.launch([sys.executable, "-c", "import sys; sys.exit(7)"], config_path=config_path, device="cpu")
    wait_until(lambda: not ours.alive(worker.pid, worker.started), what="the worker to exit", interval=0.02)
    assert theirs.exit_code(worker.pid) is None and ours.exit_code(worker.pid) == 7
