"""How far a run is, in the words a trainer's user expects: a bar, the elapsed time, the time left and the
speed, and the device it trains on.

Read from the run's events: the worker's ``running`` status event (the step it starts from, its
``max_train_steps``, its device and the time training began) and its latest metric event (the step, its
time, ``step_time``). The speed is the trainer's own ``step_time`` (training steps only); the time left
is the remaining steps at the pace measured since training began (as of the last metric), which counts the samples and
checkpoints as well, so it does not promise what the run cannot keep.
"""

import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlmodel import Session, select

from app.lifecycle import RunStatus
from app.models import Run, RunEvent

SCAN = 200  # events read back (newest first) to find the latest metric with a step time
CACHE_SIZE = 512  # runs whose "running" event is remembered (it never changes for one start of a run)


@dataclass(frozen=True)
class Start:
    """The worker's ``running`` status event: where and when training (re)began."""

    time: float
    step: int
    max_train_steps: int | None
    device: str | None


@dataclass(frozen=True)
class LastMetric:
    time: float
    step: int
    step_time: float | None


_starts: OrderedDict[tuple[int, str], Start] = OrderedDict()


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _start_of(session: Session, run: Run) -> Start | None:
    """The latest ``running`` event of this start of the run (remembered once found)."""
    key = (run.id, str(run.started_at))
    if key in _starts:
        return _starts[key]
    rows = session.exec(select(RunEvent.data).where(RunEvent.run_id == run.id, RunEvent.kind == "status")
                        .order_by(RunEvent.seq.desc()))
    for data in rows:
        event = json.loads(data)
        time, step = _number(event.get("time")), event.get("step")
        if event.get("status") == RunStatus.RUNNING and time is not None and isinstance(step, int):
            total = event.get("max_train_steps")
            start = Start(time=time, step=step, max_train_steps=total if isinstance(total, int) else None,
                          device=str(event["device"]) if event.get("device") else None)
            _starts[key] = start
            while len(_starts) > CACHE_SIZE:
                _starts.popitem(last=False)
            return start
        if event.get("status") == "starting":
            return None  # this start has not begun training yet (an older start's event is not this one's)
    return None


def _last_metric(session: Session, run_id: int) -> LastMetric | None:
    rows = session.exec(select(RunEvent.data).where(RunEvent.run_id == run_id, RunEvent.kind == "metric")
                        .order_by(RunEvent.seq.desc()).limit(SCAN))
    for data in rows:
        event = json.loads(data)
        time, step = _number(event.get("time")), event.get("step")
        step_time = _number(event.get("step_time"))
        if time is not None and isinstance(step, int) and step_time is not None:  # a training step, not a validation
            return LastMetric(time=time, step=step, step_time=step_time if step_time > 0 else None)
    return None


def duration(seconds: float | None) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``, ``3 d 4 h``; ``—`` when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def progress_of(run: Run, start: Start | None, last: LastMetric | None, now: float) -> dict | None:
    """What the status card shows of a run's progress (None while it is queued)."""
    if run.status == RunStatus.QUEUED or run.started_at is None:
        return None
    total = (start.max_train_steps if start and start.max_train_steps else None) or (run.config or {}).get("max_train_steps")
    step = max(run.step or 0, last.step if last else 0)
    started = _utc(run.started_at).timestamp()
    ended = _utc(run.finished_at).timestamp() if run.finished_at and run.status != RunStatus.RUNNING else None
    live = run.status == RunStatus.RUNNING
    steps_per_s = 1 / last.step_time if last and last.step_time else None
    pace = None  # wall seconds per step since training began: samples and checkpoints included
    if start and last and last.step > start.step and last.time > start.time:
        pace = (last.time - start.time) / (last.step - start.step)
    # as of the last metric event (as a progress bar's rate is): a worker that went quiet does not count down to 0
    eta = max(0.0, (total - last.step) * pace) if live and total and pace is not None else None
    fraction = min(1.0, step / total) if total else None
    return {
        "step": step, "total": total, "percent": round(100 * fraction, 1) if fraction is not None else None,
        "elapsed": duration((ended or now) - started), "elapsed_s": (ended or now) - started,
        "eta": duration(eta) if eta is not None else None, "eta_s": eta,
        "steps_per_s": steps_per_s, "live": live, "training": start is not None,
        "device": start.device if start else None,
    }


def run_progress(session: Session, run: Run, now: float | None = None) -> dict | None:
    """The run's progress as the status card shows it (see progress_of)."""
    if run.status == RunStatus.QUEUED or run.started_at is None:
        return None
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    return progress_of(run, _start_of(session, run), _last_metric(session, run.id), now)
