"""A data dir belongs to one server at a time (SQLite).

Two servers on one data dir would each take the other's runs for its own: one that does not know
a worker's pid fails a run that is training, and a resume then starts a second worker in the same
run folder. So a server holds an exclusive lock on its data dir (trainer.runlock, SERVER_LOCK) for
its whole life, and a second one refuses to start, saying which pid holds it.
"""

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from app.settings import Settings
from trainer.runlock import SERVER_LOCK, FolderLock, LockHeld, holder_pid, is_locked


class DataDirInUse(RuntimeError):
    """Another server holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None):
        self.data_dir, self.pid = data_dir, pid
        holder, stop = (f" (pid {pid})", f" (kill {pid})") if pid else ("", "")
        super().__init__(
            f"the data dir {data_dir} is in use by another LayerSync server{holder}: two servers on one data dir "
            f"would each take the other's runs for dead. Stop that server{stop}, or start this one on another "
            "data dir (--data-dir DIR or LAYERSYNC_DATA_DIR)"
        )


def _locks_its_data_dir(settings: Settings) -> bool:
    # SQLite: the database lives with the runs and serves one server. Servers sharing a PostgreSQL
    # database on one machine are allowed, on one data dir or each on its own: each queued run is
    # claimed by one of them (app.scheduler._next_queued), any of them follows any run's events file
    # (app.follower claims the bytes), and a run's worker is told alive by its pid and its folder's
    # lock, which every server on the machine sees. So no lock is taken there.
    return settings.db_url.startswith("sqlite")


def hold_data_dir(settings: Settings) -> AbstractContextManager:
    """The data dir's lock, held until the returned context exits; raises DataDirInUse at once."""
    if not _locks_its_data_dir(settings):
        return nullcontext()
    try:
        return FolderLock(settings.data_dir, SERVER_LOCK).acquire()
    except LockHeld as held:
        raise DataDirInUse(settings.data_dir, held.pid) from None


def check_data_dir(settings: Settings) -> None:
    """Raise DataDirInUse when another server holds the data dir (takes no lock: ``hold_data_dir`` does)."""
    if _locks_its_data_dir(settings) and is_locked(settings.data_dir, SERVER_LOCK):
        raise DataDirInUse(settings.data_dir, holder_pid(Path(settings.data_dir) / SERVER_LOCK))
