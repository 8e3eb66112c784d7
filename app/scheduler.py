"""The scheduler: starts the oldest queued run when a worker slot is free, and notices workers
that ended without saying so.

It is also how a restarted server takes its runs back: a run still ``running`` keeps its slot
while its worker lives (the follower goes on reading its events); once the worker is gone
without an ``end`` event, the run is ``failed`` with the worker's last output as the reason
(``cancelled`` when a cancel had been asked for).
"""

import asyncio
import logging
from collections import Counter

from sqlalchemy.engine import Engine
from sqlmodel import Session, select, update

from app.eventlog import append_event, server_event
from app.follower import follow_run
from app.models import Run, utcnow
from app.runs import log_tail
from app.settings import Settings
from app.workers import WORKER_LOG, launch, pid_alive, slot_devices, stop_worker

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
REASON_LINES = 20


class Scheduler:
    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.command = settings.worker_command
        self.devices = slot_devices(settings.worker_slots, settings.gpus)

    def tick(self) -> bool:
        """One pass: settle ended workers, then fill free slots. True when it added events."""
        return any([self._settle_ended_workers(), self._start_queued()])

    def _settle_ended_workers(self) -> bool:
        with Session(self.engine) as session:
            running = list(session.exec(select(Run.id, Run.pid).where(Run.status == "running")))
        settled = False
        for run_id, pid in running:
            if pid is not None and pid_alive(pid):
                continue
            follow_run(self.engine, run_id)  # what it wrote before it exited comes first
            settled |= self._end_without_end_event(run_id)
        return settled

    def _end_without_end_event(self, run_id: int) -> bool:
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            status = "cancelled" if run.cancel_requested else "failed"
            lines = log_tail(run.output_dir, REASON_LINES)
            if run.pid is None:
                reason = "the server stopped while starting this run's worker: start the run again"
            elif lines:
                reason = "the worker exited without ending the run; its last output:\n" + "\n".join(lines)
            else:
                reason = f"the worker exited without ending the run and printed nothing (see {WORKER_LOG} in the run folder)"
            ended = session.exec(
                update(Run).where(Run.id == run_id, Run.status == "running")
                .values(status=status, finished_at=utcnow(), error=reason if status == "failed" else run.error)
            ).rowcount
            if not ended:  # the follower found its end event after all
                return False
            append_event(session, run_id=run_id, event=server_event("end", status=status, step=run.step, reason=reason))
            session.commit()
            return True

    def _free_devices(self, session: Session) -> list[str]:
        busy = Counter(session.exec(select(Run.slot).where(Run.status == "running")))
        return list((Counter(self.devices) - busy).elements())

    def _start_queued(self) -> bool:
        started = False
        with Session(self.engine) as session:
            free = self._free_devices(session)
            while free:
                run = session.exec(select(Run).where(Run.status == "queued").order_by(Run.created_at, Run.id)).first()
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
            pid = launch(self.command, config=run.config, output_dir=run.output_dir, device=device)
        except OSError as exc:
            reason = f"the worker could not be started ({exc}): check the worker_command setting"
            session.exec(update(Run).where(Run.id == run_id).values(status="failed", finished_at=utcnow(), error=reason))
            append_event(session, run_id=run_id, event=server_event("end", status="failed", step=0, reason=reason))
            session.commit()
            return
        session.exec(update(Run).where(Run.id == run_id).values(pid=pid))
        where = "the CPU" if device == "cpu" else f"GPU {device}"
        message = f"worker started (pid {pid}) on {where}"
        append_event(session, run_id=run_id, event=server_event("status", status="running", message=message))
        session.commit()
        log.info("run %s: %s", run_id, message)
        session.refresh(run)
        if run.cancel_requested:  # asked while it was being started, before its pid was known
            stop_worker(pid)

    async def run_forever(self, stored: asyncio.Event) -> None:
        """The lifespan task: a tick every TICK_SECONDS; sets ``stored`` when it added events."""
        while True:
            try:
                if await asyncio.to_thread(self.tick):
                    stored.set()
            except Exception:  # noqa: BLE001 - one bad tick (a locked database, a full disk) must not stop scheduling
                log.exception("scheduling runs failed; retrying")
            await asyncio.sleep(TICK_SECONDS)
