"""A run's event log in the database: what the SSE stream replays and the broker fans out.

Each stored event is the worker's JSON object, made ready to send: ``error`` and ``checkpoint``
events gain ``level`` and ``message`` so a log view shows them, ``sample`` events gain the image's
``url``. Events the server itself decides (a worker started, a worker that died, a queued run
cancelled) are appended here too, so subscribers learn of them the same way.
"""

import json
import time

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


def append_event(session: Session, *, run_id: int, event: dict) -> RunEvent:
    """Add one event (not committed: it belongs to the caller's transaction)."""
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
