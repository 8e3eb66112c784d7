"""One worker per run folder: a second worker for the same run exits at once with its own exit code
and a clear error, having written nothing, while the first one trains on."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.factories import SEED_SNIPPET, fast_config, write_config
from tests.utils.waiting import PATIENCE_S, wait_until
from trainer.cli import train_main
from trainer.events import EVENTS_FILE, read_events
from trainer.runlock import FOLDER_IN_USE_EXIT, RUN_LOCK, FolderLock, LockHeld, is_locked

ROOT = Path(__file__).resolve().parents[2]


def contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock file) and its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != RUN_LOCK}


def test_a_lock_is_exclusive_across_open_files_and_let_go_on_release(tmp_path):
    with FolderLock(tmp_path, RUN_LOCK) as held:
        assert is_locked(tmp_path)
        with pytest.raises(LockHeld) as info:
            FolderLock(tmp_path, RUN_LOCK).acquire()  # another open file of the same process is refused too
        assert info.value.pid == os.getpid() and f"pid {os.getpid()}" in str(info.value)
        with held:  # entering a lock already held does not take it a second time
            assert is_locked(tmp_path)
    assert not is_locked(tmp_path) and not is_locked(tmp_path / "no such folder")


def test_a_worker_for_a_run_folder_in_use_writes_nothing_and_says_who_holds_it(tmp_path, capsys):
    out = tmp_path / "run"
    path = write_config(tmp_path / "run.json", dict(SEED_SNIPPET, max_train_steps=3))
    with FolderLock(out, RUN_LOCK):  # the run's worker, as far as this one can tell
        assert train_main(["--config", str(path), "--output-dir", str(out)]) == FOLDER_IN_USE_EXIT
        err = capsys.readouterr().err
        assert f"error: the run folder {out} is in use by another worker (pid {os.getpid()})" in err
        assert "nothing was written to the folder" in err
        bad = write_config(tmp_path / "bad.json", dict(SEED_SNIPPET, layersync_lambda=0))
        assert train_main(["--config", str(bad), "--output-dir", str(out)]) == 2  # its config error is not the run's
        assert "must be > 0" in capsys.readouterr().err
    assert contents(out) == {}  # no events (no end that would end the other worker's run), no checkpoints


@pytest.mark.slow
def test_a_second_real_worker_for_a_training_run_exits_at_once_and_the_first_trains_on(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = fast_config(tiny_model_dir, out, max_train_steps=100_000, logging_steps=1, validation_steps=0,
                         checkpointing_steps=1)
    command = [sys.executable, "-m", "trainer", "--config", str(write_config(tmp_path / "run.json", config)), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        def checkpointed() -> bool:
            assert first.poll() is None, f"the first worker exited with code {first.returncode}"
            return (out / EVENTS_FILE).is_file() and any(e["event"] == "checkpoint" for e in read_events(out))

        wait_until(checkpointed, what="the first worker to write a checkpoint", interval=0.1)
        os.killpg(first.pid, signal.SIGSTOP)  # it holds its lock but writes nothing while the second one tries
        before = contents(out)
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PATIENCE_S,
                                check=False)
        assert second.returncode == FOLDER_IN_USE_EXIT, second.stderr
        assert f"is in use by another worker (pid {first.pid}), which trains this run" in second.stderr
        assert contents(out) == before  # not one byte of events, not one checkpoint
        assert "training " not in second.stderr  # it stopped before loading anything
        os.killpg(first.pid, signal.SIGCONT)
        seen = len(read_events(out))

        def trains_on() -> bool:
            assert first.poll() is None, f"the first worker exited with code {first.returncode}"
            return len(read_events(out)) > seen

        wait_until(trains_on, what="the first worker to write events again", interval=0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not is_locked(out)  # the kernel let go of the lock of a killed worker
    assert [e["status"] for e in read_events(out) if e["event"] == "status" and e["status"] == "starting"] == ["starting"]
