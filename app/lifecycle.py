"""A run's life: its statuses, the moves allowed between them, and the one function that makes a move.

    queued ──► running ──► completed
      │           ├──────► failed ─────┐
      │           └──────► cancelled ──┤  resume: queued again
      └──────────────────► cancelled ──┘

A status changes only through ``transition``. In the caller's transaction it updates the row on
condition that it still has the status being left, sets that move's timestamps and the caller's
other values, and appends the move's event: no one ever sees a status without its event, nor an
event without its status. Of two writers racing for one row (the scheduler starting a run that a
user cancels at that moment) one wins; the other's update matches no row, it writes nothing and
is told so (``RunChanged``).

A ``status`` event's ``status`` is the run's status (``queued``), or, while the run is ``running``,
the phase its worker is in: ``starting`` (the server's claim, its launch, the worker's set-up), then
``running`` once it trains; so the events of a run read in the order things happened.

No other move is needed: a run that cannot be started (its folder unwritable, its worker not
launched) has been claimed first, so it fails from ``running``; a completed run is not run again
(a new run from its config is); a queued run ends only by a cancel.
"""

from datetime import datetime

from sqlmodel import Session, select, update

from app.eventlog import append_event, server_event
from app.models import Run, RunStatus, utcnow

__all__ = ["FINISHED", "LIVE", "RESUMABLE", "TRANSITIONS", "RunChanged", "RunStateError", "RunStatus",
           "TransitionRefused", "check", "transition"]

# tuples, in the enum's order: messages list them
FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
LIVE = tuple(status for status in RunStatus if status not in FINISHED)  # waiting or training: a page follows it

# the status a run has → the statuses it may take next
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset({RunStatus.QUEUED}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED}),
}
RESUMABLE = tuple(status for status, after in TRANSITIONS.items() if RunStatus.QUEUED in after)


class RunStateError(ValueError):
    """The run is in a state that does not allow the request (HTTP 409)."""


class TransitionRefused(RunStateError):
    """The move is not in TRANSITIONS: e.g. resuming a completed run, cancelling a finished one."""


class RunChanged(RunStateError):
    """The run no longer had the status the move leaves (another writer moved it first), or is gone."""


def _sources(to: RunStatus) -> str:
    return " or ".join(status for status in RunStatus if to in TRANSITIONS[status])


def refusal(run_id: int, current: RunStatus, to: RunStatus) -> str:
    """Why ``current`` → ``to`` is refused, and what to do instead."""
    if to == RunStatus.CANCELLED and current in FINISHED:
        return f"run {run_id} already ended ({current}): there is nothing to cancel"
    if to == RunStatus.QUEUED:
        hint = {RunStatus.COMPLETED: "start a new run from its config instead",
                RunStatus.QUEUED: "it is waiting in the queue already"}.get(current, "wait until it has ended")
        return f"run {run_id} is {current}: only a {_sources(to)} run can be resumed; {hint}"
    return f"run {run_id} is {current}: only a {_sources(to)} run can become {to}"


def check(run_id: int, current: str, to: RunStatus) -> RunStatus:
    """``current`` as a RunStatus when ``current`` → ``to`` is allowed; raises TransitionRefused otherwise."""
    current = RunStatus(current)
    if to not in TRANSITIONS[current]:
        raise TransitionRefused(refusal(run_id, current, to))
    return current


def _timestamps(to: RunStatus, now: datetime) -> dict:
    if to == RunStatus.QUEUED:  # the queue's order: a resumed run queues behind those waiting
        return {"queued_at": now, "finished_at": None}
    if to == RunStatus.RUNNING:
        return {"started_at": now}
    return {"finished_at": now}


def transition(
    session: Session, *, run_id: int, to: RunStatus, expected: RunStatus | None = None, event: dict | None = None,
    **values,
) -> RunStatus:
    """Move the run to ``to`` in the caller's transaction (not committed); returns the status it left.

    ``expected`` is the status the caller saw (the move leaves it); when None, the row's status is
    read now. ``event`` is the move's event: an ``end`` (its ``status`` = ``to``) for a finished
    status, a ``status`` event otherwise; by default the server's plain one. ``values`` are other
    columns to set with it (``error``, ``slot``, ``step``…).
    Raises TransitionRefused for a move not in TRANSITIONS, RunChanged when the row no longer has
    the status being left (or is gone): in both cases nothing is written.
    """
    to = RunStatus(to)
    if expected is None:
        expected = session.exec(select(Run.status).where(Run.id == run_id)).first()
        if expected is None:
            raise RunChanged(f"run {run_id} does not exist (any more): list the runs with GET /api/runs")
    leaving = check(run_id, expected, to)
    event = _event(to, event)
    moved = session.exec(
        update(Run).where(Run.id == run_id, Run.status == leaving)
        .values(status=to, **_timestamps(to, utcnow()), **values)
    ).rowcount
    if not moved:
        raise RunChanged(f"run {run_id} is no longer {leaving}: it changed meanwhile (another request, or the "
                         f"scheduler); reload it to see how it stands")
    append_event(session, run_id=run_id, event=event)
    return leaving


def _event(to: RunStatus, event: dict | None) -> dict:
    """The move's event, checked: an ``end`` with the status it ends in, or a ``status`` event."""
    kind = "end" if to in FINISHED else "status"
    if event is None:
        return server_event(kind, status=to)
    if event.get("event") != kind or (kind == "end" and event.get("status") != to):
        needs = f"an end event with status {to}" if kind == "end" else "a status event"
        raise ValueError(f"a move to {to} needs {needs}, got {event!r}")
    return event
