"""The scheduler: starts the oldest queued run when a worker slot is free, and notices workers
that ended without saying so.

It is also how a restarted server takes its runs back: a run still ``running`` keeps its slot
while its worker lives (the follower goes on reading its events); once the worker is gone
without an ``end`` event, the run is ``failed`` with how it ended (its exit code or the signal
that killed it) and its last output as the reason (``cancelled`` when a cancel had been asked for).
A worker that a cancel's SIGTERM has not ended within CANCEL_GRACE_SECONDS is killed, group and all.
"""

import asyncio
import logging
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select, update

from app.eventlog import append_event, server_event
from app.follower import follow_run
from app.models import Run, utcnow
from app.runs import QUEUE_ORDER, log_tail
from app.settings import Settings
from app.workers import WORKER_LOG, exit_code, launch, pid_alive, slot_devices, stop_worker, write_config

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
REASON_LINES = 20
CANCEL_GRACE_SECONDS = 10.0  # the trainer checkpoints within a step; past this it is stuck
LOW_DISK_BYTES = 16 << 20  # less free space than this where a run writes: the likely cause of its end


class Scheduler:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.command = settings.worker_command
        self.devices = slot_devices(settings.worker_slots, settings.gpus)
        self._cancel_seen: dict[int, float] = {}  # run id → when this scheduler first saw its cancel
        self._killed: set[int] = set()  # runs whose worker was killed after the grace period

    def tick(self) -> bool:
        """One pass: settle ended workers, then fill free slots. True when it added events."""
        return any([self._settle_ended_workers(), self._start_queued()])

    def _settle_ended_workers(self) -> bool:
        with Session(self.engine) as session:
            query = select(Run.id, Run.pid, Run.pid_started, Run.cancel_requested).where(Run.status == "running")
            running = list(session.exec(query))
        settled = False
        for run_id, pid, started, cancel_requested in running:
            if pid is not None and pid_alive(pid, started):
                if cancel_requested:
                    self._enforce_cancel(run_id, pid, started)
                continue
            follow_run(self.engine, run_id)  # what it wrote before it exited comes first
            settled |= self._end_without_end_event(run_id, exit_code(pid) if pid is not None else None)
            self._cancel_seen.pop(run_id, None)
            self._killed.discard(run_id)
        return settled

    def _enforce_cancel(self, run_id: int, pid: int, started: int | None) -> None:
        """SIGKILL the worker's process group once a cancel has waited CANCEL_GRACE_SECONDS."""
        seen = self._cancel_seen.setdefault(run_id, time.monotonic())
        if time.monotonic() - seen >= CANCEL_GRACE_SECONDS and run_id not in self._killed:
            log.warning("run %s: the worker did not stop within %g s of the cancel; killing it", run_id, CANCEL_GRACE_SECONDS)
            stop_worker(pid, started, signal.SIGKILL)
            self._killed.add(run_id)

    def _end_without_end_event(self, run_id: int, code: int | None) -> bool:
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            status = "cancelled" if run.cancel_requested else "failed"
            reason = self._reason(run, code)
            ended = session.exec(
                update(Run).where(Run.id == run_id, Run.status == "running")
                .values(status=status, finished_at=utcnow(), error=reason)
            ).rowcount
            if not ended:  # the follower found its end event after all
                return False
            append_event(session, run_id=run_id, event=server_event("end", status=status, step=run.step, reason=reason))
            session.commit()
            return True

    def _reason(self, run: Run, code: int | None) -> str:
        """Why a worker ended without an end event, in words: how it exited, the disk, its last output."""
        if run.pid is None:
            return "the server stopped while starting this run's worker: resume the run"
        if run.id in self._killed:
            return (f"cancelled: the worker did not stop within {CANCEL_GRACE_SECONDS:g} s of the cancel, so it was "
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
        busy = Counter(session.exec(select(Run.slot).where(Run.status == "running")))
        return list((Counter(self.devices) - busy).elements())

    def _start_queued(self) -> bool:
        started = False
        with Session(self.engine) as session:
            free = self._free_devices(session)
            while free:
                run = session.exec(select(Run).where(Run.status == "queued").order_by(*QUEUE_ORDER)).first()
                if run is None:
                    break
                run_id, device = run.id, free[0]
                claimed = session.exec(
                    update(Run).where(Run.id == run_id, Run.status == "queued")
                    .values(status="running", started_at=utcnow(), slot=device)
                ).rowcount
                session.commit()
                if claimed:  # else it was cancelled or deleted meanwhile: look again
                    self._launch(session, run_id, device)
                    free.pop(0)
                    started = True
        return started

    def _launch(self, session: Session, run_id: int, device: str) -> None:
        run = session.get(Run, run_id)
        try:
            config_path = write_config(run.output_dir, run.config)
        except OSError as exc:
            why = disk_problem(run.output_dir) or str(exc)
            return self._fail_start(session, run, f"the run folder {run.output_dir} cannot be written ({why}): "
                                    "free disk space or fix its permissions, then resume the run")
        try:
            pid, started = launch(self.command, config_path=config_path, device=device)
        except OSError as exc:
            return self._fail_start(session, run, f"the worker could not be started ({exc}): check the worker_command setting")
        session.exec(update(Run).where(Run.id == run_id).values(pid=pid, pid_started=started))
        where = "the CPU" if device == "cpu" else f"GPU {device}"
        message = f"worker started (pid {pid}) on {where}"
        append_event(session, run_id=run_id, event=server_event("status", status="running", message=message))
        session.commit()
        log.info("run %s: %s", run_id, message)
        session.refresh(run)
        if run.cancel_requested:  # asked while it was being started, before its pid was known
            stop_worker(pid, started)

    def _fail_start(self, session: Session, run: Run, reason: str) -> None:
        session.exec(update(Run).where(Run.id == run.id).values(status="failed", finished_at=utcnow(), error=reason))
        append_event(session, run_id=run.id, event=server_event("end", status="failed", step=run.step, reason=reason))
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
