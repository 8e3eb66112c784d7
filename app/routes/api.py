"""The JSON API under /api: runs, their metrics, events and files; model families; the config schema."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from sqlmodel import func, select

from app import configs, errors, metrics, runs, schema, sse
from app.bounds import EventsAfter, LastEventId, Limit, LogLines, MaxPoints, Offset, StepsAfter
from app.db import SessionDep
from app.eventlog import last_seq
from app.models import RUN_STATUSES, Run, RunPublic, RunsPage, RunStatus
from app.runs import NAME_MAX

router = APIRouter(prefix="/api", tags=["api"], responses=errors.INVALID)

SNIPPET = {"layersync_enabled": True, "layersync_student_block": 8, "layersync_teacher_block": 16, "layersync_lambda": 0.2}
ConfigBody = Annotated[
    dict[str, Any],
    Body(
        description="The flat run config, as in a config.json; every key is optional (see GET /api/schema).",
        openapi_examples={"LayerSync 8 → 16": {"value": SNIPPET}, "baseline": {"value": {}}},
    ),
]


def run_or_404(run_id: int, session: SessionDep) -> Run:
    return runs.get_run(session, run_id=run_id)


RunDep = Annotated[Run, Depends(run_or_404)]


# open without a token (app.auth.OPEN_PATHS): the Docker healthcheck probes it
@router.get("/health")
def health(request: Request, session: SessionDep) -> dict:
    """Whether the server and its database answer, with the worker slots and how many runs wait or train."""
    counts = dict(session.exec(select(Run.status, func.count()).group_by(Run.status)).all())
    slots = request.app.state.scheduler.devices
    return {"status": "ok", "slots": slots, "queued": counts.get(RunStatus.QUEUED, 0),
            "running": counts.get(RunStatus.RUNNING, 0)}


@router.get("/families")
def list_families() -> list[dict]:
    """The model families a run can use."""
    return schema.families()


@router.get("/schema")
def config_schema() -> list[dict]:
    """Every config key with its type, default, bounds and description."""
    return schema.config_fields()


ConfigFileBody = Annotated[
    dict[str, Any],
    Body(
        description="A config file's JSON: ours (flat keys) or SimpleTuner's config.json (\"--key\" keys, \"None\" for unset).",
        openapi_examples={"SimpleTuner": {"value": {"--model_family": "flux", "--layersync_enabled": "true",
                                                    "--layersync_student_block": "8", "--validation_prompt": "None"}},
                          "ours": {"value": SNIPPET}},
    ),
]


class ConfigImport(BaseModel):
    config: dict[str, Any]
    warnings: list[str]


class ConfigImportProblems(errors.Problems):
    config: dict[str, Any] | None = Field(None, description="What the file set, imported (the keys it leaves out take "
                                          "their defaults); absent when the body is not a config file at all")
    warnings: list[str] = Field(default_factory=list)


@router.post("/configs/import", response_model=ConfigImport, responses={
    422: {"model": ConfigImportProblems, "description": "Every problem of the file's config, with what the file set"}})
def import_config(data: ConfigFileBody, request: Request):
    """A config file → the full config it means (every key) and the import's warnings: what
    `layersync train --config FILE --print-config` prints. 422 lists every problem, as POST /api/runs does."""
    settings = request.app.state.settings
    try:
        return configs.import_file(data, model_roots=settings.model_roots, runs_dir=settings.runs_dir)
    except configs.ImportProblems as exc:
        detail = [{"loc": ["body", key] if key else ["body"], "msg": message} for key, message in exc.errors]
        return JSONResponse({"detail": detail, "config": exc.config, "warnings": exc.warnings}, status_code=422)


@router.post("/runs", status_code=201)
def create_run(
    config: ConfigBody, request: Request, response: Response, session: SessionDep,
    name: Annotated[str | None, Query(max_length=NAME_MAX, description="Run name; default: its LayerSync setting.")] = None,
) -> RunPublic:
    """Validate a config and queue a run (422 with one message per bad key)."""
    settings = request.app.state.settings
    run = runs.create_run(session, config=config, name=name, runs_dir=settings.runs_dir, model_roots=settings.model_roots)
    response.headers["Location"] = f"/api/runs/{run.id}"
    return runs.to_public(run)


@router.get("/runs")
def list_runs(
    session: SessionDep,
    limit: Limit = 50,
    offset: Offset = 0,
    status: Literal[RUN_STATUSES] | None = None,
) -> RunsPage:
    """Runs, newest first, a page at a time."""
    return runs.list_runs(session, limit=limit, offset=offset, status=status)


@router.get("/runs/{run_id}", responses=errors.RUN_ERRORS)
def get_run(run: RunDep) -> RunPublic:
    """One run: status, config, last metrics, failure reason."""
    return runs.to_public(run)


@router.get("/runs/{run_id}/metrics", responses=errors.RUN_ERRORS)
def get_metrics(
    run: RunDep, session: SessionDep,
    names: Annotated[str | None, Query(description="Comma-separated series, e.g. loss,diffusion_loss; default: all.")] = None,
    since: StepsAfter = None,
    max_points: MaxPoints = 2000,
) -> dict:
    """Metric series downsampled to max_points (each bucket's min and max kept), and the last event id
    they include (follow on with GET /api/runs/{id}/events?since=that id)."""
    last_event_id = last_seq(session, run_id=run.id)  # read first: the series may hold more, never less
    wanted = [n for n in names.split(",") if n.strip()] if names else metrics.metric_names(session, run_id=run.id)
    series = metrics.metric_series(session, run_id=run.id, names=[n.strip() for n in wanted], since=since, max_points=max_points)
    return {"run_id": run.id, "last_event_id": last_event_id, "series": series}


@router.get("/runs/{run_id}/events", response_class=Response,
            responses={200: {"content": {"text/event-stream": {}}},
                       204: {"description": "The run has ended and nothing is left to send"}, **errors.RUN_ERRORS})
async def run_events(
    run_id: int, request: Request,
    since: EventsAfter = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Server-Sent Events of the run (metric, status, log, sample, end): replay, then live; closes after end."""
    state = request.app.state
    after = last_event_id if last_event_id is not None else since or 0
    return await sse.open_stream(state.engine, state.broker, run_id, after)


@router.get("/runs/{run_id}/log", responses=errors.RUN_ERRORS)
def get_log(run: RunDep, lines: LogLines = 200) -> dict:
    """The last lines the worker printed."""
    return {"run_id": run.id, "lines": runs.log_tail(run.output_dir, lines)}


@router.get("/runs/{run_id}/files/{path:path}", response_class=FileResponse, responses=errors.RUN_ERRORS)
def get_file(run: RunDep, path: str) -> FileResponse:
    """A file of the run's folder, such as a sample grid (samples/step_0000100.png)."""
    return FileResponse(runs.run_file(run, path))


@router.post("/runs/{run_id}/cancel", responses=errors.RUN_ERRORS)
def cancel_run(run_id: int, session: SessionDep) -> RunPublic:
    """Cancel a queued run at once, or ask a running one to stop (it checkpoints, then ends cancelled).

    Asking again while the worker stops is 409 (a cancel was already requested), not a second
    SIGTERM: the worker is finishing its step and writing its final checkpoint. One that takes
    longer than the cancel grace is killed by the server."""
    return runs.to_public(runs.cancel_run(session, run_id=run_id))


@router.post("/runs/{run_id}/resume", responses=errors.RUN_ERRORS)
def resume_run(run_id: int, session: SessionDep) -> RunPublic:
    """Queue a failed or cancelled run again: it continues from its latest checkpoint, in the same run
    (one without a checkpoint of its own starts again from where it first started)."""
    return runs.to_public(runs.resume_run(session, run_id=run_id))


@router.delete("/runs/{run_id}", status_code=204, responses=errors.RUN_ERRORS)
def delete_run(run_id: int, session: SessionDep) -> None:
    """Delete a run that is not running, with its metrics and folder."""
    runs.delete_run(session, run_id=run_id)
