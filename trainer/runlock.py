"""Exclusive locks on folders: a worker on its run folder, a server on its data dir.

An advisory ``flock`` on a lock file inside the folder, held for the holder's whole life and let go
by the kernel when the process ends however it ends (kill -9 included), so a lock can never be left
behind by a dead process. The file holds the holder's pid, for the message a refused second holder
prints. Torch-free: the server asks whether a run's worker holds its folder without importing torch.
"""

import fcntl
import os
from pathlib import Path

RUN_LOCK = "worker.lock"  # in runs/<id>/: held by the run's worker
SERVER_LOCK = "server.lock"  # in the data dir: held by the server that owns it
FOLDER_IN_USE_EXIT = 3  # the exit code of a worker that found its run folder held by another


class LockHeld(RuntimeError):
    """Another process holds the lock; ``pid`` is its pid when it wrote one."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        super().__init__(f"{path} is locked by {'pid ' + str(pid) if pid else 'another process'}")


class FolderLock:
    """``with FolderLock(folder, name):`` holds ``folder/name`` exclusively, or raises LockHeld at once."""

    def __init__(self, folder: str | Path, name: str):
        self.path = Path(folder) / name
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, holder_pid(self.path)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor lets go of the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self if self._fd is not None else self.acquire()  # ``with FolderLock(...).acquire():`` too

    def __exit__(self, *exc) -> None:
        self.release()


def holder_pid(path: str | Path) -> int | None:
    """The pid written in a lock file, or None."""
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(folder: str | Path, name: str = RUN_LOCK) -> bool:
    """Whether a live process holds ``folder/name`` (a run folder's worker lock by default).

    Tried with a shared, non-blocking flock that is let go at once: it fails only while someone holds
    the exclusive lock. A folder or lock file that does not exist is not locked."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also lets go of the shared lock, if it was taken
    return False
