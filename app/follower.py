"""Follows each live run's events.jsonl into the database.

The byte offset of what was stored is kept on the run row and moves in the same transaction as
the rows made from those bytes, and the transaction starts by moving it from the value that was
read: a crash, a restart or a second reader can never store a line twice or skip one. Only
complete lines are read; a line still being written waits for the next pass. A line that is not
an event is skipped with a warning (it cannot become one later: the worker appends whole lines);
of a line that is a broken start followed by a whole event, only the broken start is.
"""

import asyncio
import json
import logging
import math
import os
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select, update

from app.eventlog import append_event
from app.lifecycle import FINISHED, RunChanged, RunStatus, transition
from app.metrics import record_points
from app.models import SQL_INT_MAX, Run
from trainer.events import EVENT_TYPES, EVENTS_FILE

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1
CHUNK_BYTES = 4 << 20  # a long backlog (a restart after hours) is stored a chunk per transaction
NOT_SERIES = ("event", "time", "step")
# a bound on one call's passes: each pass stores a chunk or finds another reader stored one (offsets
# only grow, so it ends), but a file a worker appends faster than we read must not hold the caller forever
MAX_PASSES = 10_000
EVENT_START = b'{"event"'  # how the trainer begins every line: the first key of each record it writes


def follow_run(engine: Engine, run_id: int) -> int:
    """Store the complete lines appended to the run's events file since the last call; returns how many.

    Reads until the end of the file, also when another reader took a chunk first: the scheduler
    relies on it to have stored a dead worker's last events (its ``end``) before it fails the run.
    """
    stored = 0
    for _ in range(MAX_PASSES):
        count, more = _follow_chunk(engine, run_id)
        stored += count
        if not more:
            return stored
    log.warning("run %s: %s still not read to its end after %d passes; the next pass goes on", run_id, EVENTS_FILE, MAX_PASSES)
    return stored


def _follow_chunk(engine: Engine, run_id: int) -> tuple[int, bool]:
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None or run.status != RunStatus.RUNNING:
            return 0, False
        offset, path = run.events_offset, Path(run.output_dir) / EVENTS_FILE
        try:
            if os.path.getsize(path) <= offset:
                return 0, False
            with open(path, "rb") as file:
                file.seek(offset)
                chunk = file.read(CHUNK_BYTES)
        except FileNotFoundError:  # the worker has not written its first event yet
            return 0, False
        end = chunk.rfind(b"\n") + 1
        if end == 0 and len(chunk) == CHUNK_BYTES:
            end = len(chunk)  # one line longer than a chunk is not an event; don't wait on it forever
        events, end = _events(run_id, offset, chunk[:end])
        if end == 0:
            return 0, False
        # claim the bytes first: this write is what makes a concurrent reader's transaction fail
        claimed = session.exec(
            update(Run).where(Run.id == run_id, Run.events_offset == offset).values(events_offset=offset + end)
        ).rowcount
        if not claimed:  # another reader stored these bytes (and maybe more): read on from where it stopped
            session.rollback()
            return 0, True
        try:
            _store(session, run_id, events)
        except RunChanged as exc:  # ended meanwhile by another writer: its status stands, and a run no
            session.rollback()     # longer running is not followed
            log.warning("run %s: its worker's end was not stored: %s", run_id, exc)
            return 0, False
        session.commit()
        return len(events), len(chunk) == CHUNK_BYTES  # a full chunk: the file may hold more


def _events(run_id: int, offset: int, data: bytes) -> tuple[list[dict], int]:
    """The events in ``data`` (complete lines) up to and including an ``end``, and the bytes they took."""
    events, position = [], 0
    for line in data.splitlines(keepends=True):
        event = _parse(run_id, offset + position, line)
        position += len(line)
        if event is not None:
            events.append(event)
            if event["event"] == "end":  # the run is over: nothing after it belongs to it
                break
    return events, position


def _parse(run_id: int, offset: int, line: bytes) -> dict | None:
    if not line.strip():
        return None
    event, problem = _decode(line)
    if problem is None:
        return event
    # a worker killed mid-write leaves half a line, and a worker of an older version appended its
    # first event to it: keep that event, skip only the broken bytes before it
    start = line.find(EVENT_START, 1)
    while start != -1:
        event, _ = _decode(line[start:])
        if event is not None:
            log.warning("run %s: skipped %d bytes of %s after byte %s that are not an event (a line cut short: %s) "
                        "and kept the event after them: %.200r", run_id, start, EVENTS_FILE, offset, problem, line[:start])
            return event
        start = line.find(EVENT_START, start + 1)
    log.warning("run %s: skipped a line of %s after byte %s that is not an event (%s): %.200r",
                run_id, EVENTS_FILE, offset, problem, line)
    return None


def _decode(data: bytes) -> tuple[dict | None, str | None]:
    """(the event, None), or (None, what is wrong with it)."""
    try:
        # NaN and Infinity are not JSON: the trainer writes them as null, and so do we
        event = json.loads(data, parse_constant=lambda constant: None)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, str(exc)
    problem = _problem(event)
    return (None, problem) if problem else (event, None)


def _problem(event) -> str | None:
    if not isinstance(event, dict) or event.get("event") not in EVENT_TYPES:
        return f"needs an 'event' among {', '.join(EVENT_TYPES)}"
    step = event.get("step")
    if (event["event"] == "metric" or step is not None) and not (isinstance(step, int) and 0 <= step <= SQL_INT_MAX):
        return "'step' must be a whole number from 0"
    if event["event"] == "end" and event.get("status") not in FINISHED:
        return f"an end needs a 'status' among {', '.join(FINISHED)}"
    return None


def _store(session: Session, run_id: int, events: list[dict]) -> None:
    """Events into the log, metrics into the series, and what the run row shows (one transaction)."""
    run = session.get(Run, run_id)
    last_metrics, changes, points, end = dict(run.last_metrics), {}, [], None
    for event in events:
        kind = event["event"]
        if kind == "end":  # the last event (_events stops there): the move to its status appends it
            end = event
        else:
            append_event(session, run_id=run_id, event=event)
        if event.get("step") is not None and kind in ("metric", "status", "end"):
            changes["step"] = event["step"]
        if kind == "metric":
            values = {k: _number(v) for k, v in event.items() if k not in NOT_SERIES}
            values = {k: v for k, v in values.items() if v is not None}
            points += [(event["step"], name, value) for name, value in values.items()]
            last_metrics.update(values)
        elif kind == "checkpoint":
            changes["last_checkpoint"] = event.get("path")
        elif kind == "error":
            changes["error"] = str(event.get("message", ""))
        elif kind == "end" and event["status"] == RunStatus.FAILED and event.get("reason"):
            changes["error"] = str(event["reason"])
    record_points(session, run_id=run_id, points=points)
    if last_metrics != run.last_metrics:
        changes["last_metrics"] = last_metrics
    if end is not None:  # the worker's own end: its status, its event and the row's last values at once
        transition(session, run_id=run_id, to=end["status"], expected=RunStatus.RUNNING, event=end, **changes)
    elif changes:
        session.exec(update(Run).where(Run.id == run_id).values(**changes))


def _number(value) -> float | None:
    """A metric's value as a float; None for what is no finite number (null, text, true, 1e999)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def follow_live_runs(engine: Engine) -> int:
    with Session(engine) as session:
        live = list(session.exec(select(Run.id).where(Run.status == RunStatus.RUNNING)))
    return sum(follow_run(engine, run_id) for run_id in live)


async def follow_forever(engine: Engine, stored: asyncio.Event) -> None:
    """The lifespan task: a pass over the live runs every POLL_SECONDS; sets ``stored`` after new rows."""
    while True:
        try:
            if await asyncio.to_thread(follow_live_runs, engine):
                stored.set()
        except Exception:  # noqa: BLE001 - one bad pass (a locked database, a full disk) must not stop following
            log.exception("following the runs' events failed; retrying")
        await asyncio.sleep(POLL_SECONDS)
