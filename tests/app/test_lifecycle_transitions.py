"""app.lifecycle: every allowed move, every forbidden one, two writers racing for one run, and a move's
status, timestamps and event written together or not at all."""

import itertools
import json
import threading
from datetime import datetime, timezone

import pytest
from sqlmodel import Session, select

from app import lifecycle
from app.lifecycle import FINISHED, TRANSITIONS, RunChanged, RunStatus, TransitionRefused, transition
from app.models import Run, RunEvent, utcnow

ALLOWED = [(before, after) for before, targets in TRANSITIONS.items() for after in sorted(targets)]
FORBIDDEN = [pair for pair in itertools.product(RunStatus, RunStatus) if pair not in ALLOWED]


def add_run(engine, status: RunStatus) -> int:
    with Session(engine) as session:
        run = Run(name=f"was {status}", config={}, status=status, queued_at=None)
        session.add(run)
        session.commit()
        return run.id


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)  # SQLite may hand it back zoneless


def stored(engine, run_id: int) -> tuple[Run, list[dict]]:
    with Session(engine) as session:
        events = session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.seq))
        return session.get(Run, run_id), [json.loads(event.data) for event in events]


def test_the_table_covers_every_status_and_names_no_other():
    assert set(TRANSITIONS) == set(RunStatus)
    assert all(targets <= set(RunStatus) for targets in TRANSITIONS.values())
    assert not TRANSITIONS[RunStatus.COMPLETED]  # a completed run is not run again: a new run from its config is
    assert set(FINISHED) | set(lifecycle.LIVE) == set(RunStatus) and not set(FINISHED) & set(lifecycle.LIVE)


@pytest.mark.parametrize("before, after", ALLOWED, ids=[f"{b.value}-{a.value}" for b, a in ALLOWED])
@pytest.mark.parametrize("told", [True, False], ids=["expected given", "status read"])
def test_an_allowed_move_writes_its_status_timestamps_values_and_event(engine, before, after, told):
    run_id = add_run(engine, before)
    start = utcnow()
    with Session(engine) as session:
        left = transition(session, run_id=run_id, to=after, expected=before if told else None, error="why")
        session.commit()
    run, events = stored(engine, run_id)
    assert left == before and run.status == after and run.error == "why"
    kind = "end" if after in FINISHED else "status"
    assert [(event["event"], event["status"]) for event in events] == [(kind, after.value)]
    if after == RunStatus.QUEUED:  # queued anew: the queue's order, and no end any more
        assert utc(run.queued_at) >= start and run.finished_at is None
    elif after == RunStatus.RUNNING:
        assert utc(run.started_at) >= start and run.finished_at is None
    else:
        assert utc(run.finished_at) >= start


@pytest.mark.parametrize("before, after", FORBIDDEN, ids=[f"{b.value}-{a.value}" for b, a in FORBIDDEN])
def test_a_forbidden_move_is_refused_and_writes_nothing(engine, before, after):
    run_id = add_run(engine, before)
    for expected in (None, before):
        with Session(engine) as session, pytest.raises(TransitionRefused, match=f"run {run_id} "):
            transition(session, run_id=run_id, to=after, expected=expected, error="never written")
    run, events = stored(engine, run_id)
    assert run.status == before and run.error is None and run.finished_at is None and events == []


def test_refusals_say_what_to_do_instead(engine):
    completed, failed = add_run(engine, RunStatus.COMPLETED), add_run(engine, RunStatus.FAILED)
    with Session(engine) as session:
        with pytest.raises(TransitionRefused) as resumed:
            transition(session, run_id=completed, to=RunStatus.QUEUED)
        with pytest.raises(TransitionRefused) as cancelled:
            transition(session, run_id=failed, to=RunStatus.CANCELLED)
    assert str(resumed.value) == (f"run {completed} is completed: only a failed or cancelled run can be resumed; "
                                  "start a new run from its config instead")
    assert str(cancelled.value) == f"run {failed} already ended (failed): there is nothing to cancel"


def test_a_move_the_row_no_longer_allows_is_told_and_writes_nothing(engine):
    run_id = add_run(engine, RunStatus.RUNNING)  # the caller saw it queued; the scheduler started it since
    with Session(engine) as session, pytest.raises(RunChanged, match=f"run {run_id} is no longer queued"):
        transition(session, run_id=run_id, to=RunStatus.CANCELLED, expected=RunStatus.QUEUED)
    with Session(engine) as session, pytest.raises(RunChanged, match="does not exist"):
        transition(session, run_id=run_id + 1, to=RunStatus.CANCELLED)
    run, events = stored(engine, run_id)
    assert run.status == RunStatus.RUNNING and run.finished_at is None and events == []


def test_two_writers_racing_for_one_run_one_wins_and_the_other_is_told(engine, monkeypatch):
    """The scheduler starts a queued run while a user cancels it: both read "queued" before either
    writes. Checking the status read is not enough (running → cancelled is allowed too): the update
    conditioned on "queued" is what makes the second writer lose."""
    run_id = add_run(engine, RunStatus.QUEUED)
    both_read = threading.Barrier(2, timeout=600)
    checked = lifecycle.check

    def check_then_wait(*args):
        status = checked(*args)
        both_read.wait()  # neither writes until both have read and checked the status
        return status

    monkeypatch.setattr(lifecycle, "check", check_then_wait)
    outcomes: dict[RunStatus, object] = {}

    def write(to: RunStatus) -> None:
        with Session(engine) as session:  # a connection of its own to the database file
            try:
                transition(session, run_id=run_id, to=to)
                session.commit()
                outcomes[to] = "won"
            except RunChanged as exc:
                outcomes[to] = exc

    writers = [threading.Thread(target=write, args=(to,)) for to in (RunStatus.RUNNING, RunStatus.CANCELLED)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=600)
    assert not any(writer.is_alive() for writer in writers)
    winner = next(to for to, outcome in outcomes.items() if outcome == "won")
    loser, told = next((to, outcome) for to, outcome in outcomes.items() if outcome != "won")
    assert isinstance(told, RunChanged) and f"run {run_id} is no longer queued" in str(told)
    run, events = stored(engine, run_id)
    assert run.status == winner != loser
    assert [event["status"] for event in events] == [winner.value]  # the loser's event was never written


def test_the_status_and_its_event_are_seen_together_or_not_at_all(engine, monkeypatch):
    run_id = add_run(engine, RunStatus.QUEUED)
    with Session(engine) as writer:
        transition(writer, run_id=run_id, to=RunStatus.CANCELLED)
        run, events = stored(engine, run_id)  # another connection, before the commit
        assert run.status == RunStatus.QUEUED and events == [] and run.finished_at is None
        writer.commit()
    run, events = stored(engine, run_id)
    assert run.status == RunStatus.CANCELLED and run.finished_at is not None and [e["event"] for e in events] == ["end"]

    other = add_run(engine, RunStatus.QUEUED)

    def failing_append(session, *, run_id, event):
        raise OSError("the disk is full")

    monkeypatch.setattr(lifecycle, "append_event", failing_append)
    with Session(engine) as session, pytest.raises(OSError):
        transition(session, run_id=other, to=RunStatus.CANCELLED)  # the caller's transaction is rolled back
    run, events = stored(engine, other)
    assert run.status == RunStatus.QUEUED and run.finished_at is None and events == []


def test_a_move_takes_only_its_own_kind_of_event(engine):
    run_id = add_run(engine, RunStatus.RUNNING)
    with Session(engine) as session:
        for wrong in ({"event": "status", "status": "completed"}, {"event": "end", "status": "failed"}):
            with pytest.raises(ValueError, match="a move to completed needs an end event with status completed"):
                transition(session, run_id=run_id, to=RunStatus.COMPLETED, event=wrong)
    assert stored(engine, run_id)[0].status == RunStatus.RUNNING
