"""A run's event log in the database: what the SSE stream replays and the broker fans out.

Each stored event is the worker's JSON object, made ready to send: ``error`` and ``checkpoint``
events gain ``level`` and ``message`` so a log view shows them, ``sample`` events gain the image's
``url``. Events the server itself decides (a worker started, a worker that died, a queued run
cancelled) are appended here too, so subscribers learn of them the same way.

Event ids (``seq``) are given out in the order the events commit, on every database: readers (the SSE
feed, a stream's replay) keep one cursor, "every event with ``seq`` > the last I sent", and an event
that committed after a higher seq had been read would be skipped for good. SQLite has one writer at a
time, so a transaction's seqs are taken and committed before the next writer's. PostgreSQL gives out
sequence numbers at insert time to transactions that commit in any order, so a transaction that
appends events first takes EVENTS_LOCK (a transaction-level advisory lock, held to its commit or
rollback): the writers of events take their seqs one transaction after another, as on SQLite. Other
writes (metric points, the follower's offset, a cancel's flag) are not held up by it; appending events
is short, and one server's follower already stores a whole chunk of lines in one transaction.
Every writer locks the run's row first (its conditional update: a move, the follower's offset claim)
and appends the run's events after: a transaction that took the lock and then waited for another
run's row could deadlock with that run's writer (PostgreSQL would then abort one of the two).
"""

import json
import time

from sqlalchemy import func
from sqlmodel import Session, select

from app.models import RunEvent


def file_url(run_id: int, path: str) -> str:
    return f"/api/runs/{run_id}/files/{path}"


def prepare(run_id: int, event: dict) -> dict:
    """The worker's event with the fields a viewer needs added (the worker's own fields untouched)."""
    kind = event["event"]
    if kind == "sample" and isinstance(event.get("path"), str):
        return {**event, "url": file_url(run_id, event["path"])}
    if kind == "checkpoint":
        return {"level": "info", "message": f"checkpoint at step {event.get('step')}: {event.get('path')}", **event}
    if kind == "error":
        return {"level": "error", **event, "message": str(event.get("message", "the worker reported an error"))}
    return event


# pg_advisory_xact_lock's key: any 64-bit number no other lock of this database uses ("LSevents")
EVENTS_LOCK = 0x4C536576656E7473


def lock_events(session: Session) -> None:
    """Take EVENTS_LOCK for the session's transaction (PostgreSQL; SQLite's write lock does the same),
    before any of its events is inserted; once per transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return
    transaction = session.get_transaction()
    if transaction is not None and session.info.get("events_locked") is transaction:
        return
    session.execute(select(func.pg_advisory_xact_lock(EVENTS_LOCK)))  # begins the transaction if none is open
    session.info["events_locked"] = session.get_transaction()


def append_event(session: Session, *, run_id: int, event: dict) -> RunEvent:
    """Add one event (not committed: it belongs to the caller's transaction)."""
    lock_events(session)
    row = RunEvent(run_id=run_id, kind=event["event"], data=json.dumps(prepare(run_id, event)))
    session.add(row)
    return row


def server_event(kind: str, **fields) -> dict:
    """An event the server writes on the worker's behalf, shaped like the worker's own."""
    return {"event": kind, "time": round(time.time(), 3), **fields}


def events_after(session: Session, *, run_id: int, after: int, limit: int = 1000) -> list[RunEvent]:
    """The run's events with ``seq`` > ``after``, oldest first."""
    query = select(RunEvent).where(RunEvent.run_id == run_id, RunEvent.seq > after).order_by(RunEvent.seq).limit(limit)
    return list(session.exec(query))


def new_events(session: Session, *, after: int, limit: int = 5000) -> list[RunEvent]:
    """Every run's events with ``seq`` > ``after``: the broker's feed."""
    return list(session.exec(select(RunEvent).where(RunEvent.seq > after).order_by(RunEvent.seq).limit(limit)))


def last_seq(session: Session, *, run_id: int | None = None) -> int:
    query = select(RunEvent.seq).order_by(RunEvent.seq.desc()).limit(1)
    if run_id is not None:
        query = query.where(RunEvent.run_id == run_id)
    return session.exec(query).first() or 0
