"""Runs: create, list, read, cancel, delete, and what a run's folder shows (log tail, latest sample).

Functions here take a session and keyword arguments; they neither read requests nor answer them,
and raise ``ConfigError``, ``RunNotFound`` or ``RunStateError`` (app.errors answers them 422, 404
and 409). Their messages say what to do, naming the API's route where one helps, and ``to_public``
gives a run its URLs. A status changes only through app.lifecycle.transition.
"""

import json
import re
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session, delete, func, select, update

from app.bounds import run_id_in_range
from app.configs import check_config
from app.eventlog import file_url, server_event
from app.lifecycle import RunChanged, RunStateError, RunStatus, check, transition
from app.models import Metric, MetricBlock, Run, RunEvent, RunPublic, RunsPage, StudyRun
from app.paths import inside
from app.workers import WORKER_LOG, stop_worker
from trainer.config import ConfigError, TrainConfig, config_to_json
from trainer.runlock import RUN_LOCK, holder_pid, is_locked

NAME_MAX = 200
QUEUE_ORDER = (Run.queued_at, Run.id)  # first queued, first started; a resumed run queues anew


class NotFound(LookupError):
    """What was asked for does not exist (HTTP 404)."""


class RunNotFound(NotFound):
    def __init__(self, run_id: int):
        super().__init__(f"run {run_id} does not exist: list the runs with GET /api/runs")


def default_name(config) -> str:
    """The name of a run the user left unnamed: its LayerSync setting, so the runs list reads as an experiment."""
    if not config.layersync_enabled:
        return "LayerSync off"
    pairs = ", ".join(f"{student}→{teacher}" for student, teacher in config.pairs())
    return f"LayerSync {pairs} λ {config.layersync_lambda:g}"


def create_run(
    session: Session, *, config: object, name: str | None, runs_dir: Path, model_roots: Sequence[Path] = ()
) -> Run:
    """Validate ``config`` (raises trainer.config.ConfigError) and queue a run in ``runs_dir/<id>``.

    The output folder is always the server's, whatever ``output_dir`` the config carried: the
    server follows and serves runs from its data dir only. A model folder must lie in ``model_roots``
    (none by default: the built-in models only), a checkpoint in ``runs_dir``.
    """
    validated = check_config(config, model_roots=model_roots, runs_dir=runs_dir)  # every problem, paths first
    name = (name or "").strip() or default_name(validated)
    if len(name) > NAME_MAX:
        raise ConfigError([("name", f"the run name is {len(name)} characters long: keep it to {NAME_MAX}")])
    run = add_run(session, config=validated, name=name, runs_dir=runs_dir)
    session.commit()
    session.refresh(run)
    return run


def add_run(session: Session, *, config: TrainConfig, name: str, runs_dir: Path) -> Run:
    """Add a queued run of a validated config in ``runs_dir/<id>`` to the session, uncommitted (a study
    commits its runs together)."""
    run = Run(name=name, config={})
    session.add(run)
    session.flush()  # the id names the folder; the row is committed only complete
    run.output_dir = str(Path(runs_dir) / str(run.id))
    run.config = config_to_json(config.model_copy(update={"output_dir": run.output_dir}))
    return run


def list_runs(session: Session, *, limit: int = 50, offset: int = 0, status: str | None = None) -> RunsPage:
    """Runs newest first, ``limit`` at a time."""
    query, count = select(Run), select(func.count()).select_from(Run)
    if status is not None:
        query, count = query.where(Run.status == status), count.where(Run.status == status)
    runs = session.exec(query.order_by(Run.id.desc()).offset(offset).limit(limit))
    positions = queue_positions(session)
    return RunsPage(runs=[to_public(run, positions) for run in runs], total=session.exec(count).one(), limit=limit, offset=offset)


def get_run(session: Session, *, run_id: int) -> Run:
    run = session.get(Run, run_id) if run_id_in_range(run_id) else None
    if run is None:
        raise RunNotFound(run_id)
    return run


def queue_positions(session: Session) -> dict[int, int]:
    """Each queued run's place in the queue, 1 for the run that starts next (the scheduler's order)."""
    queued = session.exec(select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(*QUEUE_ORDER))
    return {run_id: position for position, run_id in enumerate(queued, start=1)}


def to_public(run: Run, positions: dict[int, int] | None = None) -> RunPublic:
    """The run as the API shows it; ``positions`` (from queue_positions) is looked up when not given."""
    if positions is None and run.status == RunStatus.QUEUED:
        positions = queue_positions(Session.object_session(run))
    return RunPublic.model_validate(run, update={
        "queue_position": (positions or {}).get(run.id),
        "url": f"/api/runs/{run.id}",
        "max_train_steps": run.config.get("max_train_steps", 0),
        "sample_url": latest_sample_url(run),
    })


def cancel_run(session: Session, *, run_id: int) -> Run:
    """A queued run is cancelled at once; a running one is asked to stop (SIGTERM to its process
    group: the worker checkpoints and ends the run ``cancelled``). Asked once only: a second SIGTERM
    would cut the worker's final checkpoint short, so a second cancel raises RunStateError."""
    run = get_run(session, run_id=run_id)
    check(run_id, run.status, RunStatus.CANCELLED)  # a finished run: there is nothing to cancel
    if run.status == RunStatus.QUEUED:
        reason = "cancelled before it started"
        try:
            transition(session, run_id=run_id, to=RunStatus.CANCELLED, expected=RunStatus.QUEUED,
                       event=server_event("end", status=RunStatus.CANCELLED, reason=reason))
        except RunChanged:  # the scheduler started it (or another request ended it) meanwhile: look again
            session.rollback()
            run = get_run(session, run_id=run_id)
            check(run_id, run.status, RunStatus.CANCELLED)
        else:
            session.commit()
            session.refresh(run)
            return run
    # running: ask its worker to stop; conditional, as the worker may end the run at the same moment
    asked = session.exec(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING, Run.cancel_requested.is_(False))
        .values(cancel_requested=True)
    ).rowcount
    if not asked:
        session.rollback()
        check(run_id, get_run(session, run_id=run_id).status, RunStatus.CANCELLED)  # it ended meanwhile
        raise RunStateError(
            f"run {run_id}: a cancel was already requested: the worker is finishing its step and writing a "
            "checkpoint (it is killed if it takes too long); wait until the run ends cancelled"
        )
    session.commit()
    session.refresh(run)
    if run.pid is not None:  # only the request that set cancel_requested gets here
        stop_worker(run.pid, run.pid_started)
    return run


def resume_run(session: Session, *, run_id: int) -> Run:
    """Queue a failed or cancelled run again, to continue from its latest checkpoint in its own
    folder; one that has none starts again as it first did (from the checkpoint its config names,
    or from step 0). The steps it repeats overwrite their points."""
    run = get_run(session, run_id=run_id)
    check(run_id, run.status, RunStatus.QUEUED)  # only a failed or cancelled run; says what to do otherwise
    _refuse_while_locked(run, "resumed")
    config = {**run.config, "resume_from_checkpoint": "latest"} if has_own_checkpoint(run) else run.config
    event = server_event("status", status=RunStatus.QUEUED, message=_queued_again(run))
    try:
        transition(session, run_id=run_id, to=RunStatus.QUEUED, expected=run.status, event=event, error=None,
                   pid=None, pid_started=None, slot=None, cancel_requested=False, config=config)
    except RunChanged:  # resumed or deleted by another request meanwhile
        session.rollback()
        raise RunChanged(f"run {run_id} changed while it was being resumed: reload it and try again") from None
    session.commit()
    session.refresh(run)
    return run


def has_own_checkpoint(run: Run) -> bool:
    """Whether the run saved a checkpoint in its own folder: what ``resume_from_checkpoint: latest`` finds
    (trainer.checkpoint.checkpoint_dirs; not imported, it would load torch into the server)."""
    folder = Path(run.output_dir) / "checkpoints" if run.output_dir else None
    complete = folder is not None and any((path / "state.json").is_file() for path in folder.glob("step_*"))
    return bool(run.last_checkpoint) or complete


def resume_offer(run: Run) -> str:
    """What resuming a failed or cancelled run does, in the words of its button."""
    if has_own_checkpoint(run):
        return "Resume from the latest checkpoint"
    if run.started_at is None:  # cancelled while queued: there is nothing to resume
        return "Queue it again"
    origin = run.config.get("resume_from_checkpoint")
    return "Start again from the checkpoint it started from" if origin and origin != "latest" else "Start again from step 0"


def _queued_again(run: Run) -> str:
    """The event of a resume: where the run will start."""
    if has_own_checkpoint(run):
        return f"resumed: queued to continue from {run.last_checkpoint or 'its latest checkpoint'}"
    if run.started_at is None:
        return "queued again: it was cancelled before it started"
    return f"queued to start again from {_start_point(run.config)}"


def _start_point(config: dict) -> str:
    """Where a run without checkpoints of its own starts again: the checkpoint it started from, or step 0."""
    origin = config.get("resume_from_checkpoint")
    if origin and origin != "latest":
        return f"the checkpoint it started from ({origin}): it has none of its own"
    return "step 0: it has no checkpoint"


def _refuse_while_locked(run: Run, action: str) -> None:
    """Raise RunStateError while a process holds the run folder's lock: that is the run's worker, whatever
    the row says (a server that never learnt its pid may have failed the run). A resume would start a second
    worker in the folder; a delete would pull the folder from under it."""
    if run.output_dir and is_locked(run.output_dir, RUN_LOCK):
        pid = holder_pid(Path(run.output_dir) / RUN_LOCK)
        who, stop = (f"a worker (pid {pid})", f" (kill {pid})") if pid else ("a worker", "")
        raise RunStateError(f"run {run.id} cannot be {action}: {who} still trains in its folder {run.output_dir}; "
                            f"wait until it exits, or stop it{stop}, then try again")


def delete_run(session: Session, *, run_id: int) -> None:
    """Delete a run that is not running, with its points, events and folder."""
    run = get_run(session, run_id=run_id)
    if run.status == RunStatus.RUNNING:
        raise RunStateError(f"run {run_id} is running: cancel it first (POST /api/runs/{run_id}/cancel), then delete it")
    _refuse_while_locked(run, "deleted")
    # the rows that point at the run go first: SQLite enforces the foreign keys (PRAGMA foreign_keys=ON)
    for table in (Metric, MetricBlock, RunEvent, StudyRun):
        session.exec(delete(table).where(table.run_id == run_id))
    gone = session.exec(delete(Run).where(Run.id == run_id, Run.status != RunStatus.RUNNING)).rowcount
    if not gone:  # the scheduler started it after we looked: keep its rows too
        session.rollback()
        raise RunStateError(f"run {run_id} has just started: cancel it first (POST /api/runs/{run_id}/cancel)")
    session.commit()
    if run.output_dir:
        shutil.rmtree(run.output_dir, ignore_errors=True)


WARNINGS_SCANNED = 1000  # the newest log events looked at for warnings: a run logs a few dozen lines, not thousands


def run_warnings(session: Session, *, run_id: int, limit: int = 20) -> list[dict]:
    """The run's newest ``warning`` log events, oldest first, as ``{"step", "message"}``: the notices of its config,
    a stop step, the collapse guard. The run page shows them above the log tail, which may have scrolled past them."""
    rows = session.exec(select(RunEvent.data).where(RunEvent.run_id == run_id, RunEvent.kind == "log")
                        .order_by(RunEvent.seq.desc()).limit(WARNINGS_SCANNED))
    found = []
    for data in rows:
        event = json.loads(data)
        if event.get("level") == "warning" and isinstance(event.get("message"), str):
            found.append({"step": event.get("step"), "message": event["message"]})
            if len(found) == limit:
                break
    return found[::-1]


def log_tail(output_dir: str | Path, n: int = 100) -> list[str]:
    """The last ``n`` lines of the worker's output (its log messages, warnings and tracebacks)."""
    try:
        with open(Path(output_dir) / WORKER_LOG, encoding="utf-8", errors="replace") as file:
            return [line.rstrip("\n") for line in deque(file, maxlen=n)]
    except FileNotFoundError:
        return []


def latest_sample(output_dir: str | Path) -> str | None:
    """The newest sample (a PNG grid, or a WAV for audio families), relative to the run folder
    (``samples/step_<n>.png``), or None."""
    steps = []
    for path in (Path(output_dir) / "samples").glob("step_*.*"):
        match = re.fullmatch(r"step_(\d+)\.(png|wav)", path.name)
        if match:
            steps.append((int(match[1]), path))
    return str(max(steps)[1].relative_to(output_dir)) if steps else None


def latest_sample_url(run: Run) -> str | None:
    path = latest_sample(run.output_dir) if run.output_dir else None
    return file_url(run.id, path) if path else None


def run_file(run: Run, path: str) -> Path:
    """A file inside the run's folder, refusing paths that climb out of it (``..``, absolute paths,
    symlinks pointing outward): 404 either way, so nothing outside is revealed."""
    target = inside(Path(run.output_dir), path)
    if target is None:
        raise NotFound(f"run {run.id} has no file {path!r}: that path leads out of the run's folder; ask for a "
                       "path relative to it, e.g. samples/step_0000100.png")
    if not target.is_file():
        raise NotFound(f"run {run.id} has no file {path!r}: sample paths come from the run's sample events")
    return target
