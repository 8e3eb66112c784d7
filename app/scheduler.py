"""The scheduler: starts the oldest queued run when a worker slot is free, and notices workers
that ended without saying so.

It is also how a restarted server takes its runs back: a run still ``running`` keeps its slot
while its worker lives or a process holds its folder's lock (trainer.runlock; that process becomes
its worker), and the follower goes on reading its events; once the worker is gone without an ``end``
event and the lock is free, the run is ``failed`` with how it ended (its exit code or the signal that
killed it) and its last output as the reason (``cancelled`` when a cancel had been asked for).
A worker that a cancel's SIGTERM has not ended within the cancel grace (Settings.cancel_grace_seconds,
restarted by each event it writes meanwhile, CANCEL_GRACE_LIMIT of them at most) is killed, group and all.
A slot is free again once its run has ended and its worker has exited (EXIT_WAIT_SECONDS at most):
a worker that wrote its end may still hold the GPU's memory until it exits.
"""

import asyncio
import logging
import shutil
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

from sqlalchemy.engine import Engine
from sqlmodel import Session, select, update

from app.eventlog import append_event, last_seq, server_event
from app.follower import follow_run
from app.lifecycle import FINISHED, RunChanged, RunStatus, transition
from app.models import Run, utcnow
from app.probes import Probes
from app.runs import QUEUE_ORDER, log_tail
from app.settings import Settings
from app.workers import WORKER_LOG, Workers, join_slots, slot_devices, slots_for, split_slots, start_time, stop_worker, write_config
from trainer.runlock import RUN_LOCK, holder_pid, is_locked

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
REASON_LINES = 20
# the grace restarts while the worker writes events (it finishes its step, then checkpoints), but a
# worker that keeps training through the SIGTERM is killed after this many graces in all
CANCEL_GRACE_LIMIT = 6
EXIT_WAIT_SECONDS = 30.0  # how long an ended run's slot waits for its worker to exit
# a run claimed this long ago without a worker's pid is one whose server stopped while launching it
LAUNCH_GRACE_SECONDS = 30.0
LOW_DISK_BYTES = 16 << 20  # less free space than this where a run writes: the likely cause of its end


class Scheduler:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.command = settings.worker_command
        self.devices = slot_devices(settings.worker_slots, settings.gpus)
        self.grace = settings.cancel_grace_seconds
        self.clock = time.monotonic  # a test's clock instead
        self._cancel_seen: dict[int, CancelSeen] = {}  # run id → how its cancel has gone so far
        self._killed: set[int] = set()  # runs whose worker was killed after the grace period
        self.workers = Workers()  # the workers this server started
        self.probes = Probes(settings.data_dir / "probes", self.command, self.workers, len(self.devices))

    def tick(self) -> bool:
        """One pass: reap exited workers, settle ended ones, then fill free slots. True when it added events."""
        self.workers.reap()
        self.probes.settle()
        return any([self._settle_ended_workers(), self._start_queued()])

    def _settle_ended_workers(self) -> bool:
        with Session(self.engine) as session:
            query = select(Run.id, Run.pid, Run.pid_started, Run.cancel_requested, Run.output_dir, Run.started_at)
            running = list(session.exec(query.where(Run.status == RunStatus.RUNNING)))
        settled = False
        for run_id, pid, started, cancel_requested, output_dir, claimed_at in running:
            if pid is None and claimed_at is not None and utcnow() - claimed_at < timedelta(seconds=LAUNCH_GRACE_SECONDS):
                continue  # claimed a moment ago: the server that claimed it (maybe another on this database) is launching it
            if pid is not None and self.workers.alive(pid, started):
                if cancel_requested:
                    self._enforce_cancel(run_id, pid, started)
                continue
            if output_dir and is_locked(output_dir):
                # a worker we do not know (started by hand, or by a server before its pid was saved)
                # trains in the run's folder: the run lives on and the follower goes on reading it
                self._adopt_lock_holder(run_id, output_dir)
                continue
            follow_run(self.engine, run_id)  # what it wrote before it exited comes first
            settled |= self._end_without_end_event(run_id, self.workers.exit_code(pid) if pid is not None else None)
            self._cancel_seen.pop(run_id, None)
            self._killed.discard(run_id)
        return settled

    def _adopt_lock_holder(self, run_id: int, output_dir: str) -> None:
        """Record the process that holds the run folder's lock (its pid is in the lock file) as the run's
        worker, so that a cancel reaches it and its end is noticed like any worker's."""
        holder = holder_pid(Path(output_dir) / RUN_LOCK)
        started = start_time(holder) if holder else None
        if started is None:  # no pid written yet, or the holder is gone: look again next tick
            return
        with Session(self.engine) as session:
            session.exec(update(Run).where(Run.id == run_id).values(pid=holder, pid_started=started))
            session.commit()
        log.warning("run %s: its worker was not known to this server; pid %s holds its folder and is followed as "
                    "its worker", run_id, holder)

    def _enforce_cancel(self, run_id: int, pid: int, started: int | None) -> None:
        """SIGKILL the worker's process group once a cancel has waited the grace since the cancel or
        since the worker's last event (it is still finishing its step or writing its checkpoint),
        and CANCEL_GRACE_LIMIT graces at most."""
        if run_id in self._killed:
            return
        now = self.clock()
        with Session(self.engine) as session:
            seq = last_seq(session, run_id=run_id)
        seen = self._cancel_seen.get(run_id)
        if seen is None:
            seen = self._cancel_seen[run_id] = CancelSeen(first=now, last_event=now, seq=seq)
        elif seq != seen.seq:  # it wrote something since: alive and stopping
            seen = self._cancel_seen[run_id] = seen._replace(last_event=now, seq=seq)
        quiet, total = now - seen.last_event, now - seen.first
        if quiet >= self.grace or total >= CANCEL_GRACE_LIMIT * self.grace:
            log.warning("run %s: the worker did not stop within %s of the cancel; killing it", run_id, self._waited())
            stop_worker(pid, started, signal.SIGKILL)
            self._killed.add(run_id)

    def _waited(self) -> str:
        return f"{self.grace:g} s (after its last event; {CANCEL_GRACE_LIMIT * self.grace:g} s in all)"

    def _end_without_end_event(self, run_id: int, code: int | None) -> bool:
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            status = RunStatus.CANCELLED if run.cancel_requested else RunStatus.FAILED
            reason = self._reason(run, code)
            event = server_event("end", status=status, step=run.step, reason=reason)
            try:
                transition(session, run_id=run_id, to=status, expected=RunStatus.RUNNING, event=event, error=reason)
            except RunChanged:  # the follower found its end event after all
                return False
            session.commit()
            return True

    def _reason(self, run: Run, code: int | None) -> str:
        """Why a worker ended without an end event, in words: how it exited, the disk, its last output."""
        if run.pid is None:
            return "the server stopped while starting this run's worker: resume the run"
        if run.id in self._killed:
            return (f"cancelled: the worker did not stop within {self._waited()} of the cancel, so it was "
                    "killed (SIGKILL) without a final checkpoint; resuming continues from its latest checkpoint")
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            how = f"was killed by {name}" + (" (by a user, or by the system when memory ran out)" if name == "SIGKILL" else "")
        else:
            how = "exited" if code is None else f"exited with code {code}"
        reason = f"the worker {how} without ending the run"
        disk = disk_problem(run.output_dir)
        if disk:
            reason = f"{disk}; {reason}"
        lines = log_tail(run.output_dir, REASON_LINES)
        if lines:
            return f"{reason}; its last output:\n" + "\n".join(lines)
        return f"{reason} and printed nothing (see {WORKER_LOG} in the run folder)"

    def _free_devices(self, session: Session) -> list[str]:
        # a run of several processes holds several slots, stored as "0,1"
        busy = Counter(slot for held in session.exec(select(Run.slot).where(Run.status == RunStatus.RUNNING))
                       for slot in split_slots(held))
        busy.update(self._exiting_slots(session))
        busy.update(self.probes.busy_slots())
        return list((Counter(self.devices) - busy).elements())

    def _exiting_slots(self, session: Session) -> list[str]:
        """The slots of runs that ended lately whose worker has not exited yet (it may still hold the GPU)."""
        since = utcnow() - timedelta(seconds=EXIT_WAIT_SECONDS)
        ended = session.exec(
            select(Run.slot, Run.pid, Run.pid_started)
            .where(Run.status.in_(FINISHED), Run.finished_at >= since, Run.pid.is_not(None), Run.slot.is_not(None))
        )
        return [slot for held, pid, started in ended if self.workers.alive(pid, started) for slot in split_slots(held)]

    def _start_queued(self) -> bool:
        started = False
        with Session(self.engine) as session:
            free = self._free_devices(session)
            self.probes.start(free)  # first: a probe holds its slot for minutes, a run for hours
            while free:
                run = _next_queued(session)
                if run is None:
                    break
                run_id, processes = run.id, processes_of(run.config)
                slots, why_not = slots_for(free, self.devices, processes)
                if why_not:  # this server can never give it its slots: it fails rather than block the queue
                    self._refuse(session, run, why_not)
                    continue
                if slots is None:  # the oldest run waits for enough free slots; later runs queue behind it
                    break
                device = join_slots(slots)
                # the run's status events read in order: this one, the worker's own "starting", then its
                # "running" once it trains (the run is running, as far as the queue goes, from here)
                event = server_event("status", status="starting", message=f"starting a worker on {_where(device, processes)}")
                try:
                    transition(session, run_id=run_id, to=RunStatus.RUNNING, expected=RunStatus.QUEUED, event=event,
                               slot=device)
                except RunChanged:  # cancelled or deleted meanwhile: look again
                    session.rollback()
                    continue
                session.commit()
                self._launch(session, run_id, device, processes)
                for slot in slots:
                    free.remove(slot)
                started = True
        return started

    def _refuse(self, session: Session, run: Run, reason: str) -> None:
        """Fail a queued run this server can never start (a queued run fails through its claim, as a failed start does)."""
        event = server_event("status", status="starting", message="claimed to be refused: " + reason)
        try:
            transition(session, run_id=run.id, to=RunStatus.RUNNING, expected=RunStatus.QUEUED, event=event)
        except RunChanged:  # cancelled or deleted meanwhile
            session.rollback()
            return
        self._fail_start(session, run, reason)

    def _launch(self, session: Session, run_id: int, device: str, processes: int = 1) -> None:
        run = session.get(Run, run_id)
        try:
            config_path = write_config(run.output_dir, run.config)
        except OSError as exc:
            why = disk_problem(run.output_dir) or str(exc)
            return self._fail_start(session, run, f"the run folder {run.output_dir} cannot be written ({why}): "
                                    "free disk space or fix its permissions, then resume the run")
        try:
            pid, started = self.workers.launch(self.command, config_path=config_path, device=device, processes=processes)
        except OSError as exc:
            return self._fail_start(session, run, f"the worker could not be started ({exc}): check the worker_command setting")
        message = f"worker started (pid {pid}) on {_where(device, processes)}"
        try:  # not a move: the run is running since its claim; it gains its worker's pid
            session.exec(update(Run).where(Run.id == run_id).values(pid=pid, pid_started=started))
            append_event(session, run_id=run_id, event=server_event("status", status="starting", message=message))
            session.commit()
        except Exception as exc:  # noqa: BLE001 - e.g. a locked database: the worker must not run unrecorded
            return self._abandon(session, run, pid, started, exc)
        log.info("run %s: %s", run_id, message)
        session.refresh(run)
        if run.cancel_requested:  # asked while it was being started, before its pid was known
            stop_worker(pid, started)

    def _abandon(self, session: Session, run: Run, pid: int, started: int | None, exc: Exception) -> None:
        """A worker whose pid could not be saved would run unseen, and a later tick would give its slot
        to another run: kill it, and fail the run with why (a later tick does, should the database still refuse)."""
        run_id = run.id  # read before the rollback expires the row
        session.rollback()
        stop_worker(pid, started, signal.SIGKILL)
        reason = (f"the worker was stopped right after it started because the server could not record it ({exc}): "
                  "check the database (disk space, another process holding it), then resume the run")
        try:
            self._fail_start(session, run, reason, pid=pid, pid_started=started)
        except Exception:  # noqa: BLE001 - the run stays running without a pid: the next tick fails it
            session.rollback()
            log.exception("run %s: %s; recording that failed too", run_id, reason)

    def _fail_start(self, session: Session, run: Run, reason: str, **values) -> None:
        # values: the pid of a killed worker, so its slot waits for it to exit
        event = server_event("end", status=RunStatus.FAILED, step=run.step, reason=reason)
        transition(session, run_id=run.id, to=RunStatus.FAILED, expected=RunStatus.RUNNING, event=event, error=reason,
                   **values)
        session.commit()
        log.warning("run %s: %s", run.id, reason)

    async def run_forever(self, stored: asyncio.Event) -> None:
        """The lifespan task: a tick every TICK_SECONDS; sets ``stored`` when it added events."""
        while True:
            try:
                if await asyncio.to_thread(self.tick):
                    stored.set()
            except Exception:  # noqa: BLE001 - one bad tick (a locked database, a full disk) must not stop scheduling
                log.exception("scheduling runs failed; retrying")
            await asyncio.sleep(TICK_SECONDS)


def _next_queued(session: Session) -> Run | None:
    """The oldest queued run, for the caller to claim (transition to running, expecting queued) and commit.

    Several servers may share one PostgreSQL database: FOR UPDATE SKIP LOCKED locks the row until the
    claim commits, and a second server's scheduler passes over it to the next queued run instead of
    waiting on it. SQLite renders no FOR UPDATE; there the claim's conditional update is what decides:
    of two writers (a single writer at a time) the second matches no queued row and is told RunChanged.
    Either way a queued run is launched once."""
    query = select(Run).where(Run.status == RunStatus.QUEUED).order_by(*QUEUE_ORDER).limit(1)
    return session.exec(query.with_for_update(skip_locked=True)).first()


def _where(device: str, processes: int = 1) -> str:
    slots = split_slots(device)
    if processes > 1:
        where = "the CPU" if slots[0] == "cpu" else f"GPUs {', '.join(slots)}"
        return f"{where}, {processes} processes (torchrun)"
    return "the CPU" if device == "cpu" else f"GPU {device}"


def processes_of(config: dict | None) -> int:
    """The run's num_processes (configs stored before the key existed: 1)."""
    value = (config or {}).get("num_processes") or 1
    return value if isinstance(value, int) and value >= 1 else 1


class CancelSeen(NamedTuple):
    first: float  # when this scheduler first saw the cancel (its clock)
    last_event: float  # when it last saw the run's events grow (the cancel, at first)
    seq: int  # the run's last event then


def disk_problem(output_dir: str) -> str | None:
    """'the disk … is full' when the disk a run writes to is (nearly) full; None otherwise."""
    folder = Path(output_dir)
    while not folder.exists() and folder != folder.parent:  # a folder not yet made: the disk it would be on
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < LOW_DISK_BYTES:
        return f"the disk holding {output_dir} is full ({free >> 20} MiB free)"
    return None
