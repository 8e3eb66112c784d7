"""Runs: create, list, read, cancel, delete, and what a run's folder shows (log tail, latest sample).

Functions here take a session and keyword arguments and know nothing of HTTP; they raise
``ConfigError``, ``RunNotFound`` or ``RunStateError`` with a message that says what to do.
"""

import re
import shutil
from collections import deque
from pathlib import Path

from sqlmodel import Session, delete, func, select, update

from app.eventlog import append_event, file_url, server_event
from app.models import FINISHED, SQL_INT_MAX, Metric, MetricBlock, Run, RunEvent, RunPublic, RunsPage, utcnow
from app.workers import WORKER_LOG, stop_worker
from trainer.config import ConfigError, config_to_json, validate_config

NAME_MAX = 200


class NotFound(LookupError):
    """What was asked for does not exist (HTTP 404)."""


class RunNotFound(NotFound):
    def __init__(self, run_id: int):
        super().__init__(f"run {run_id} does not exist: list the runs with GET /api/runs")


class RunStateError(ValueError):
    """The run is in a state that does not allow the request (HTTP 409)."""


def default_name(config) -> str:
    """The name of a run the user left unnamed: its LayerSync setting, so the runs list reads as an experiment."""
    if not config.layersync_enabled:
        return "LayerSync off"
    pairs = ", ".join(f"{student}→{teacher}" for student, teacher in config.pairs())
    return f"LayerSync {pairs} λ {config.layersync_lambda:g}"


def create_run(session: Session, *, config: object, name: str | None, runs_dir: Path) -> Run:
    """Validate ``config`` (raises trainer.config.ConfigError) and queue a run in ``runs_dir/<id>``.

    The output folder is always the server's, whatever ``output_dir`` the config carried: the
    server follows and serves runs from its data dir only.
    """
    validated = validate_config(config)
    name = (name or "").strip() or default_name(validated)
    if len(name) > NAME_MAX:
        raise ConfigError([("name", f"the run name is {len(name)} characters long: keep it to {NAME_MAX}")])
    run = Run(name=name, config={})
    session.add(run)
    session.flush()  # the id names the folder; the row is committed only complete
    run.output_dir = str(Path(runs_dir) / str(run.id))
    run.config = config_to_json(validated.model_copy(update={"output_dir": run.output_dir}))
    session.commit()
    session.refresh(run)
    return run


def list_runs(session: Session, *, limit: int = 50, offset: int = 0, status: str | None = None) -> RunsPage:
    """Runs newest first, ``limit`` at a time."""
    query, count = select(Run), select(func.count()).select_from(Run)
    if status is not None:
        query, count = query.where(Run.status == status), count.where(Run.status == status)
    runs = session.exec(query.order_by(Run.id.desc()).offset(offset).limit(limit))
    return RunsPage(runs=[to_public(run) for run in runs], total=session.exec(count).one(), limit=limit, offset=offset)


def get_run(session: Session, *, run_id: int) -> Run:
    run = session.get(Run, run_id) if 0 < run_id <= SQL_INT_MAX else None  # SQLite refuses to look further
    if run is None:
        raise RunNotFound(run_id)
    return run


def to_public(run: Run) -> RunPublic:
    return RunPublic.model_validate(run, update={
        "url": f"/api/runs/{run.id}",
        "max_train_steps": run.config.get("max_train_steps", 0),
        "sample_url": latest_sample_url(run),
    })


def cancel_run(session: Session, *, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is asked to stop (SIGTERM to its process
    group: the worker checkpoints and ends the run ``cancelled``)."""
    run = get_run(session, run_id=run_id)
    if run.status in FINISHED:
        raise RunStateError(f"run {run_id} already ended ({run.status}): there is nothing to cancel")
    # conditional updates: the scheduler may start this run at the same moment
    cancelled = session.exec(
        update(Run).where(Run.id == run_id, Run.status == "queued").values(status="cancelled", finished_at=utcnow())
    ).rowcount
    if cancelled:
        append_event(session, run_id=run_id, event=server_event("end", status="cancelled", reason="cancelled before it started"))
    else:
        session.exec(update(Run).where(Run.id == run_id).values(cancel_requested=True))
    session.commit()
    session.refresh(run)
    if run.status == "running" and run.pid is not None:
        stop_worker(run.pid)
    return run


def delete_run(session: Session, *, run_id: int) -> None:
    """Delete a run that is not running, with its points, events and folder."""
    run = get_run(session, run_id=run_id)
    if run.status == "running":
        raise RunStateError(f"run {run_id} is running: cancel it first (POST /api/runs/{run_id}/cancel), then delete it")
    gone = session.exec(delete(Run).where(Run.id == run_id, Run.status != "running")).rowcount
    if not gone:  # the scheduler started it after we looked
        session.rollback()
        raise RunStateError(f"run {run_id} has just started: cancel it first (POST /api/runs/{run_id}/cancel)")
    for table in (Metric, MetricBlock, RunEvent):
        session.exec(delete(table).where(table.run_id == run_id))
    session.commit()
    if run.output_dir:
        shutil.rmtree(run.output_dir, ignore_errors=True)


def log_tail(output_dir: str | Path, n: int = 100) -> list[str]:
    """The last ``n`` lines of the worker's output (its log messages, warnings and tracebacks)."""
    try:
        with open(Path(output_dir) / WORKER_LOG, encoding="utf-8", errors="replace") as file:
            return [line.rstrip("\n") for line in deque(file, maxlen=n)]
    except FileNotFoundError:
        return []


def latest_sample(output_dir: str | Path) -> str | None:
    """The newest sample grid, relative to the run folder (``samples/step_<n>.png``), or None."""
    steps = []
    for path in (Path(output_dir) / "samples").glob("step_*.png"):
        match = re.fullmatch(r"step_(\d+)\.png", path.name)
        if match:
            steps.append((int(match[1]), path))
    return str(max(steps)[1].relative_to(output_dir)) if steps else None


def latest_sample_url(run: Run | RunPublic) -> str | None:
    path = latest_sample(run.output_dir) if run.output_dir else None
    return file_url(run.id, path) if path else None


def run_file(run: Run, path: str) -> Path:
    """A file inside the run's folder, refusing paths that climb out of it."""
    root = Path(run.output_dir).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"run {run.id} has no file {path!r}: sample paths come from the run's sample events")
    return target
