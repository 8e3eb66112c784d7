"""Block-map probes: the JSON API (POST /api/probes, GET /api/probes/{id}) and the form's "Map the blocks"
(POST /runs/new/probe, then the partial it polls until the map is there)."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException

from app import errors
from app.configs import check_config
from app.forms import FORM_FIELDS, by_field, form_to_config
from app.probes import ID_PATTERN, NoSlots, Probe, ProbeNotFound, Probes, heatmap
from app.routes.pages import templates
from trainer.cli import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES, DEFAULT_NOISE_LEVELS
from trainer.config import FIELDS, ConfigError, config_to_json

router = APIRouter(tags=["probes"], responses=errors.INVALID)

# the probe's sizes: each forward is kept whole in memory, so the bounds stay where a probe stays short
Batches = Annotated[int, Query(ge=1, le=64, description="Batches of the run's data the map averages over.")]
BatchSize = Annotated[int, Query(ge=1, le=256, description="Examples a batch.")]
NoiseLevels = Annotated[int, Query(ge=1, le=32, description="Noise levels each batch is seen at, spread evenly.")]
ProbeId = Annotated[str, Path(pattern=ID_PATTERN, description="The probe's id, as POST /api/probes answered it.")]
ProbeConfig = Annotated[dict[str, Any], Body(description="The flat run config whose model and data to map (as POST /api/runs).",
                                             openapi_examples={"demo": {"value": {}}})]
PROBE_ERRORS = {404: {"model": errors.Message, "description": "No such probe"},
                409: {"model": errors.Message, "description": "This server cannot start a probe"}}


def _probes(request: Request) -> Probes:
    return request.app.state.scheduler.probes


def _submit(request: Request, config: object, args: list[str]) -> Probe:
    """Check the config as a run's is checked (ConfigError: every problem), then queue the probe."""
    settings = request.app.state.settings
    validated = check_config(config, model_roots=settings.model_roots, runs_dir=settings.runs_dir)
    try:
        return _probes(request).submit(config_to_json(validated), args)
    except NoSlots as exc:
        raise HTTPException(409, str(exc)) from None
    except OSError as exc:
        raise HTTPException(500, f"the probe's folder cannot be written ({exc}): free disk space in the data dir or "
                                 "fix its permissions") from None


def _get(request: Request, probe_id: str) -> Probe:
    try:
        return _probes(request).get(probe_id)
    except ProbeNotFound as exc:
        raise HTTPException(404, str(exc)) from None


def _sizes(batches: int, batch_size: int, noise_levels: int) -> list[str]:
    return ["--batches", str(batches), "--batch-size", str(batch_size), "--noise-levels", str(noise_levels)]


@router.post("/api/probes", status_code=202, responses=PROBE_ERRORS)
def create_probe(config: ProbeConfig, request: Request, response: Response, batches: Batches = DEFAULT_BATCHES,
                 batch_size: BatchSize = DEFAULT_BATCH_SIZE, noise_levels: NoiseLevels = DEFAULT_NOISE_LEVELS) -> dict:
    """Map the blocks of a config's model on its data, as a short job on a worker slot (422: the config's problems)."""
    probe = _submit(request, config, _sizes(batches, batch_size, noise_levels))
    response.headers["Location"] = f"/api/probes/{probe.id}"
    return probe.public()


@router.get("/api/probes/{probe_id}", responses=PROBE_ERRORS)
def get_probe(request: Request, probe_id: ProbeId) -> dict:
    """A probe's status (queued, running, done, failed), its map when done, and why when it failed."""
    return _get(request, probe_id).public()


def _render(request: Request, probe: Probe | None, problems: list[str] | None = None) -> HTMLResponse:
    context = {"probe": probe, "problems": problems or [], "map": heatmap(probe.result) if probe and probe.result else None}
    return templates.TemplateResponse(request, "partials/block_map.html", context)


@router.post("/runs/new/probe", response_class=HTMLResponse, include_in_schema=False)
async def new_run_probe(request: Request):
    """The form's "Map the blocks": the probe of what the form holds, as the block map's partial."""
    posted = {key: value for key, value in (await request.form()).multi_items()
              if isinstance(value, str) and (key in FORM_FIELDS or key in FIELDS)}
    _, config = form_to_config(posted)
    try:
        probe = await run_in_threadpool(_submit, request, config, _sizes(DEFAULT_BATCHES, DEFAULT_BATCH_SIZE, DEFAULT_NOISE_LEVELS))
    except ConfigError as exc:
        fields = by_field(exc.errors)
        return _render(request, None, [f"{FORM_FIELDS[key].label if key in FORM_FIELDS else key}: {message}"
                                       if key else message for key, message in fields.items()])
    except HTTPException as exc:
        return _render(request, None, [exc.detail])
    return _render(request, probe)


@router.get("/partials/probes/{probe_id}", response_class=HTMLResponse, include_in_schema=False)
def probe_partial(request: Request, probe_id: ProbeId):
    """The block map's partial: polled while the probe waits or runs."""
    return _render(request, _get(request, probe_id))
