"""A run's events as Server-Sent Events: replay from the database, the run's status now, then live,
then close at ``end``.

Every stored event is framed once (``event:`` name, ``id:`` = its database sequence number, ``data:``
JSON) and the same bytes go to every client. A stream subscribes before it replays, so an event
stored meanwhile arrives by one way or both and is sent once (ids only grow).

After the replay comes one ``status`` frame of how the run stands now (``"current": true``, with
its queue position while it waits): a queued run's page hears at once, not when its worker starts.
It has no ``id:``, as it is no stored event: EventSource keeps the last stored id for Last-Event-ID,
and a reconnection replays from there and gets the status of that moment.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import NamedTuple

from fastapi.responses import Response, StreamingResponse
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.eventlog import events_after, last_seq, new_events
from app.lifecycle import FINISHED, RunStatus
from app.models import Run, RunEvent
from app.pubsub import CLOSED, Broker
from app.runs import RunNotFound, queue_positions, run_id_in_range

HEARTBEAT_SECONDS = 15.0  # a comment line this often keeps proxies from closing an idle stream
FEED_SECONDS = 0.25  # the feed also looks without being woken: routes and the scheduler append events too
REPLAY_BATCH = 1000
# the browser listens for these names; errors and checkpoints are shown as log lines (an event
# named "error" would reach EventSource's connection-error handler)
SSE_NAMES = {"metric": "metric", "status": "status", "log": "log", "sample": "sample", "end": "end",
             "error": "log", "checkpoint": "log"}


class Message(NamedTuple):
    seq: int
    kind: str
    frame: bytes


def message(row: RunEvent) -> Message:
    frame = f"event: {SSE_NAMES[row.kind]}\nid: {row.seq}\ndata: {row.data}\n\n".encode()
    return Message(row.seq, row.kind, frame)


async def feed_forever(engine: Engine, broker: Broker, stored: asyncio.Event) -> None:
    """The lifespan task: publish each newly stored event to its run's subscribers, in order."""
    with Session(engine) as session:
        after = last_seq(session)
    while True:
        try:
            await asyncio.wait_for(stored.wait(), FEED_SECONDS)
        except asyncio.TimeoutError:
            pass
        stored.clear()
        for row in await asyncio.to_thread(_new, engine, after):
            broker.publish(row.run_id, message(row))
            after = row.seq


def _new(engine: Engine, after: int) -> list[RunEvent]:
    with Session(engine) as session:
        return new_events(session, after=after)


def _replay(engine: Engine, run_id: int, after: int) -> list[Message]:
    with Session(engine) as session:
        return [message(row) for row in events_after(session, run_id=run_id, after=after, limit=REPLAY_BATCH)]


def _state(engine: Engine, run_id: int) -> tuple[str | None, int]:
    """(the run's status or None when it is gone, its last event's seq)."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        return (run.status if run else None), last_seq(session, run_id=run_id)


def _current(engine: Engine, run_id: int) -> tuple[bytes | None, str | None]:
    """(the status frame of the run now, its status); (None, None) when it is gone."""
    with Session(engine) as session:
        run = session.get(Run, run_id)
        if run is None:
            return None, None
        data = {"event": "status", "time": round(time.time(), 3), "status": run.status, "step": run.step, "current": True}
        if run.status == RunStatus.QUEUED:
            position = queue_positions(session).get(run_id)
            data.update(queue_position=position, message=f"queued: number {position} in the queue (runs start in "
                                                          "the order they were queued; a resumed run queues anew)")
        elif run.status == RunStatus.RUNNING:
            steps = run.config.get("max_train_steps", "?")
            stopping = "; a cancel was asked for, the worker is stopping" if run.cancel_requested else ""
            data["message"] = f"running: step {run.step} of {steps}{stopping}"
        else:
            data["message"] = run.status
    return f"event: status\ndata: {json.dumps(data)}\n\n".encode(), run.status


async def open_stream(engine: Engine, broker: Broker, run_id: int, after: int) -> Response:
    """The stream of events after ``after``; 204 (which tells EventSource not to reconnect) when
    the run has ended and nothing after ``after`` is left to send. Raises RunNotFound."""
    if not run_id_in_range(run_id):  # before any query: SQLite cannot bind an integer beyond 64 bits
        raise RunNotFound(run_id)
    status, last = await asyncio.to_thread(_state, engine, run_id)
    if status is None:
        raise RunNotFound(run_id)
    if status in FINISHED and last <= after:
        return Response(status_code=204)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering either
    return StreamingResponse(_stream(engine, broker, run_id, after), media_type="text/event-stream", headers=headers)


async def _stream(engine: Engine, broker: Broker, run_id: int, after: int) -> AsyncIterator[bytes]:
    with broker.subscribe(run_id) as queue:
        while True:
            batch = await asyncio.to_thread(_replay, engine, run_id, after)
            for item in batch:
                yield item.frame
                after = item.seq
                if item.kind == "end":
                    return
            if len(batch) < REPLAY_BATCH:
                break
        frame, status = await asyncio.to_thread(_current, engine, run_id)
        if frame is None:  # deleted meanwhile
            return
        yield frame
        if status in FINISHED:  # it ended during the replay: what it stored since (its end), then close
            for item in await asyncio.to_thread(_replay, engine, run_id, after):
                yield item.frame
                if item.kind == "end":
                    break
            return
        while True:
            try:
                item = queue.get_nowait() if not queue.empty() else await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
            except asyncio.TimeoutError:
                status, _ = await asyncio.to_thread(_state, engine, run_id)
                if status is None or status in FINISHED:  # deleted while followed, or ended without an end event
                    return
                yield b": heartbeat\n\n"
                continue
            if item is CLOSED:  # fell behind, or the server stops: the client reconnects with Last-Event-ID
                return
            if item.seq <= after:
                continue
            yield item.frame
            after = item.seq
            if item.kind == "end":
                return
