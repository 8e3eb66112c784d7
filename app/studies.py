"""Studies: paired runs, one per (arm, seed), and their effect report (app.report).

An arm is the base config with its overrides; the study sets each run's ``seed``. The arms of one seed
are paired by common random numbers: the trainer draws the initial weights from the seed and every
step's batch, noise and timesteps from (seed, step), so two arms of a seed differ only by their overrides.

Functions here take a session and keyword arguments, know nothing of HTTP, and raise ``StudyProblems``
(every problem at once, each naming its arm) or ``StudyNotFound``.
"""

import re
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from sqlmodel import Session, delete, select

from app.configs import check_config
from app.lifecycle import FINISHED, LIVE, RunStateError, RunStatus
from app.models import SQL_INT_MAX, Metric, MetricBlock, Run, RunEvent, Study, StudyRun
from app.report import DEFAULT_METRIC, NOT_METRICS, RunPoints, and_words, arm_curves, effect_report
from app.runs import NotFound, add_run, default_name
from trainer.config import ConfigError, TrainConfig, validate_config
from trainer.runlock import RUN_LOCK, is_locked

DEFAULT_ARMS = {"layersync": {}, "baseline": {"layersync_enabled": False}}
BASELINE = "baseline"
SEEDS_MAX = 32
ARMS_MAX = 16
ARM_NAME = re.compile(r"[\w.+-]{1,30}")  # a folder name as it is (layersync study writes DIR/<arm>-seed<seed>)
STUDY_NAME_MAX = 140  # with " · <arm> · seed <seed>" a run's name stays within its 200 characters
STUDY_STATUSES = ("queued", "running", "completed", "incomplete")


class StudyNotFound(NotFound):
    def __init__(self, study_id: int):
        super().__init__(f"study {study_id} does not exist: list the studies with GET /api/studies")


class StudyProblems(ConfigError):
    """Every problem of a study: ``problems`` holds (where, message), where is e.g. ("arms", "baseline", key)."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        super().__init__([(".".join(str(part) for part in loc), message) for loc, message in problems])
        self.problems = problems


def baseline_arm(arms: dict[str, dict]) -> str | None:
    """The arm the others are compared with: the one named "baseline", else the only one that switches
    LayerSync off; None when neither says."""
    if BASELINE in arms:
        return BASELINE
    off = [name for name, overrides in arms.items() if overrides.get("layersync_enabled") is False]
    return off[0] if len(off) == 1 else None


def check_study(*, config: object, seeds: object, arms: object,
                validate: Callable[[dict], TrainConfig]) -> dict[tuple[str, int], TrainConfig]:
    """Each (arm, seed)'s validated config, in the study's order (by seed, then arm, so the paired runs
    of a seed are queued together). Raises StudyProblems with every problem: a problem every arm has is
    the base config's and names all arms; the rest name their arm."""
    problems: list[tuple[tuple, str]] = []
    if not isinstance(config, dict):
        raise StudyProblems([(("config",), "the config must be a JSON object of keys and values, e.g. {\"max_train_steps\": 500}")])
    seeds = _check_seeds(seeds, problems)
    arms = _check_arms(arms, problems)
    if not arms:
        raise StudyProblems(problems)
    found: dict[str, list[tuple[str, str]]] = {}
    validated: dict[str, TrainConfig] = {}
    for arm, overrides in arms.items():
        try:
            validated[arm] = validate({**config, **overrides, "seed": seeds[0] if seeds else 0})
        except ConfigError as exc:
            found[arm] = exc.errors
    every = set.intersection(*(set(found.get(arm, [])) for arm in arms))
    for key, message in dict.fromkeys(error for errors in found.values() for error in errors):
        if (key, message) in every:
            problems.append((("config", key) if key else ("config",), f"{_arms_words(list(arms))}: {message}"))
    for arm, errors in found.items():
        for key, message in errors:
            if (key, message) not in every:
                problems.append((("arms", arm, key) if key else ("arms", arm), f"arm {arm}: {message}"))
    if not found and not problems:
        _check_distinct(validated, problems)
    if problems:
        raise StudyProblems(problems)
    return {(arm, seed): checked.model_copy(update={"seed": seed}) for seed in seeds for arm, checked in validated.items()}


def _check_seeds(seeds: object, problems: list) -> list[int]:
    if not isinstance(seeds, list) or not seeds:
        problems.append((("seeds",), "seeds must be a list of whole numbers, e.g. [0, 1, 2]"))
        return []
    if len(seeds) > SEEDS_MAX:
        problems.append((("seeds",), f"{len(seeds)} seeds: keep it to {SEEDS_MAX}"))
    good = []
    for index, seed in enumerate(seeds):
        try:
            validate_config({"seed": seed})  # the schema's own range and words for a seed
        except ConfigError as exc:
            problems.extend((("seeds", index), f"seed {seed!r}: {message}") for _, message in exc.errors)
            continue
        good.append(seed)
    repeated = sorted({seed for seed in good if good.count(seed) > 1})
    if repeated:
        problems.append((("seeds",), f"seed {and_words(repeated)} is given twice: each seed once (a repeated seed repeats a run exactly)"))
    return good


def _check_arms(arms: object, problems: list) -> dict[str, dict]:
    arms = DEFAULT_ARMS if arms is None else arms
    if not isinstance(arms, dict) or len(arms) < 2:
        problems.append((("arms",), "arms must map two or more arm names to their config overrides, e.g. "
                                    '{"layersync": {}, "baseline": {"layersync_enabled": false}}'))
        return {}
    if len(arms) > ARMS_MAX:
        problems.append((("arms",), f"{len(arms)} arms: keep it to {ARMS_MAX}"))
    good = {}
    for name, overrides in arms.items():
        if not ARM_NAME.fullmatch(name):
            problems.append((("arms", name), f"arm {name!r}: an arm's name is 1–30 letters, digits, '_', '.', '+' or '-'"))
        elif not isinstance(overrides, dict):
            problems.append((("arms", name), f"arm {name}: its overrides must be a JSON object, e.g. {{\"layersync_lambda\": 0.1}}"))
        elif "seed" in overrides:
            problems.append((("arms", name, "seed"),
                             f"arm {name}: the study sets each run's seed from its seeds; leave seed out of the arm"))
        else:
            good[name] = overrides
    if len(good) == len(arms) and baseline_arm(good) is None:
        problems.append((("arms",), "no arm to compare with: name one arm \"baseline\" (or switch LayerSync off in exactly one arm)"))
    return good


def _check_distinct(validated: dict[str, TrainConfig], problems: list) -> None:
    """Two arms that train the same config would only measure noise (none: they are paired)."""
    seen: dict[str, str] = {}
    for arm, checked in validated.items():
        key = checked.model_dump_json()
        if key in seen:
            why = " (LayerSync is off in both: switch it on in the config)" if not checked.layersync_enabled else ""
            problems.append((("arms", arm), f"arm {arm}: trains the same config as arm {seen[key]}{why}; give it different overrides"))
        seen.setdefault(key, arm)


def create_study(session: Session, *, name: str | None, config: object, seeds: object = (0, 1, 2),
                 arms: object = None, runs_dir: Path, model_roots: Sequence[Path] = ()) -> Study:
    """Validate the study and queue its runs, all in one transaction (raises StudyProblems)."""
    seeds = list(seeds) if isinstance(seeds, tuple) else seeds
    arms = DEFAULT_ARMS if arms is None else arms
    checked = check_study(config=config, seeds=seeds, arms=arms,
                          validate=lambda c: check_config(c, model_roots=model_roots, runs_dir=runs_dir))
    name = (name or "").strip() or _default_name(checked, arms)
    if len(name) > STUDY_NAME_MAX:
        raise StudyProblems([(("name",), f"the study name is {len(name)} characters long: keep it to {STUDY_NAME_MAX}")])
    study = Study(name=name, config=config, seeds=seeds, arms=arms)
    session.add(study)
    session.flush()
    for (arm, seed), run_config in checked.items():
        run = add_run(session, config=run_config, name=f"{name} · {arm} · seed {seed}", runs_dir=runs_dir)
        session.add(StudyRun(run_id=run.id, study_id=study.id, arm=arm, seed=seed))
    session.commit()
    session.refresh(study)
    return study


def _default_name(checked: dict[tuple[str, int], TrainConfig], arms: dict) -> str:
    baseline = baseline_arm(arms)
    first = next(config for (arm, _), config in checked.items() if arm != baseline)
    return f"{default_name(first)} vs {baseline}"


def get_study(session: Session, *, study_id: int) -> Study:
    study = session.get(Study, study_id) if 0 < study_id <= SQL_INT_MAX else None
    if study is None:
        raise StudyNotFound(study_id)
    return study


def list_studies(session: Session, *, limit: int = 100) -> list[Study]:
    return list(session.exec(select(Study).order_by(Study.id.desc()).limit(limit)))


def delete_study(session: Session, *, study_id: int) -> None:
    """Delete a study with all its runs (their points, events and folders), in one transaction. Refused
    (RunStateError, nothing deleted) while one of its runs is running or its worker still holds the run
    folder: cancel those first. Queued runs go with the study."""
    study = get_study(session, study_id=study_id)
    runs = [run for _, run in study_runs(session, study)]
    busy = [run.id for run in runs if run.status == RunStatus.RUNNING or (run.output_dir and is_locked(run.output_dir, RUN_LOCK))]
    if busy:
        raise RunStateError(_busy_words(study.id, busy))
    ids = [run.id for run in runs]
    # the rows that point at the runs and the study go first: SQLite enforces the foreign keys
    for table in (Metric, MetricBlock, RunEvent, StudyRun):
        session.exec(delete(table).where(table.run_id.in_(ids)))
    gone = session.exec(delete(Run).where(Run.id.in_(ids), Run.status != RunStatus.RUNNING)).rowcount if ids else 0
    if gone != len(ids):  # the scheduler started one after we looked: keep everything
        session.rollback()
        started = [run.id for run in session.exec(select(Run).where(Run.id.in_(ids), Run.status == RunStatus.RUNNING))]
        raise RunStateError(_busy_words(study.id, started or ids))
    session.exec(delete(StudyRun).where(StudyRun.study_id == study.id))
    session.delete(study)
    session.commit()
    for run in runs:
        if run.output_dir:
            shutil.rmtree(run.output_dir, ignore_errors=True)


def _busy_words(study_id: int, run_ids: list[int]) -> str:
    listed = and_words([str(run_id) for run_id in run_ids])
    cancels = "; ".join(f"POST /api/runs/{run_id}/cancel" for run_id in run_ids[:5])
    return (f"study {study_id} cannot be deleted while its run{'s' if len(run_ids) > 1 else ''} {listed} "
            f"{'are' if len(run_ids) > 1 else 'is'} running: cancel {'them' if len(run_ids) > 1 else 'it'} first "
            f"({cancels}), wait until {'they end' if len(run_ids) > 1 else 'it ends'}, then delete the study")


def study_runs(session: Session, study: Study) -> list[tuple[StudyRun, Run]]:
    """The study's runs with their places, by seed then arm (the study's order)."""
    rows = session.exec(select(StudyRun, Run).join(Run, Run.id == StudyRun.run_id).where(StudyRun.study_id == study.id))
    order = {arm: index for index, arm in enumerate(study.arms)}
    return sorted(rows, key=lambda row: (study.seeds.index(row[0].seed) if row[0].seed in study.seeds else 0,
                                         order.get(row[0].arm, 0)))


def study_status(statuses: list[str]) -> str:
    """queued (no run started), running, completed (every run), or incomplete (all ended, some failed or
    were cancelled: the report leaves their seeds out)."""
    if statuses and all(status == RunStatus.QUEUED for status in statuses):
        return "queued"
    if any(status in LIVE for status in statuses):
        return "running"
    if all(status == RunStatus.COMPLETED for status in statuses):
        return "completed"
    return "incomplete"


class MetricNotLogged(ValueError):
    """A report was asked for a metric the study's runs do not log."""


def logged_metrics(session: Session, run_ids: list[int]) -> list[str]:
    """The measures the runs log, to report on (not the learning rate nor the step time)."""
    query = select(MetricBlock.name).where(MetricBlock.run_id.in_(run_ids)).distinct().order_by(MetricBlock.name)
    return [name for name in session.exec(query) if name not in NOT_METRICS] if run_ids else []


def study_points(session: Session, study: Study, metric: str) -> list[RunPoints]:
    """Each run's place, status and points of ``metric``."""
    rows = study_runs(session, study)
    points: dict[int, dict[int, float]] = {}
    query = select(Metric.run_id, Metric.step, Metric.value).where(
        Metric.run_id.in_([run.id for _, run in rows]), Metric.name == metric)
    for run_id, step, value in session.exec(query):
        points.setdefault(run_id, {})[step] = value
    return [RunPoints(arm=place.arm, seed=place.seed, status=run.status, points=points.get(run.id, {})) for place, run in rows]


def study_public(session: Session, study: Study, *, metric: str | None = None, curves: bool = False) -> dict:
    """The study as the API answers it: its runs, status and report (None until a seed has all its arms
    completed); ``curves`` adds each arm's mean curve with its band. Raises MetricNotLogged."""
    rows = study_runs(session, study)
    logged = logged_metrics(session, [run.id for _, run in rows])
    metric = metric or DEFAULT_METRIC
    if metric != DEFAULT_METRIC and metric not in logged:
        raise MetricNotLogged(f"metric {metric!r} is not logged by the runs of study {study.id}: choose one of "
                              f"{', '.join(logged) or DEFAULT_METRIC}")
    points = study_points(session, study, metric)
    baseline = baseline_arm(study.arms)
    answer = {
        "id": study.id, "name": study.name, "url": f"/api/studies/{study.id}", "page": f"/studies/{study.id}",
        "created_at": _utc(study.created_at), "config": study.config, "seeds": study.seeds, "arms": study.arms,
        "baseline": baseline,
        "runs": [{"id": run.id, "arm": place.arm, "seed": place.seed, "status": run.status} for place, run in rows],
        "status": study_status([run.status for _, run in rows]),
        "metric": metric, "metrics": logged,
        "report": effect_report(points, arms=list(study.arms), baseline=baseline, metric=metric),
    }
    if curves:
        answer["curves"] = arm_curves(points, list(study.arms))
    return answer


def study_summary(session: Session, study: Study) -> dict:
    """A line of the studies list: its runs' statuses, counted."""
    statuses = [run.status for _, run in study_runs(session, study)]
    return {"id": study.id, "name": study.name, "url": f"/api/studies/{study.id}", "page": f"/studies/{study.id}",
            "created_at": _utc(study.created_at), "seeds": study.seeds, "arms": list(study.arms),
            "status": study_status(statuses), "runs": len(statuses),
            "finished": sum(status in FINISHED for status in statuses)}


def _utc(value: datetime) -> datetime:
    # SQLite hands datetimes back without their zone; they were stored as UTC
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _arms_words(arms: list[str]) -> str:
    return f"arm {arms[0]}" if len(arms) == 1 else f"arms {and_words(arms)}"
