"""The HTML pages (runs list, new-run form, compare; the run page is app.routes.run_page) and the
partials htmx swaps in, with the helpers every page renders with.

Every route works without JavaScript: forms post plainly and redirect (303); an htmx request gets
the partial it swaps instead. Templates autoescape everything; nothing from a user is marked safe.
"""

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from starlette.concurrency import run_in_threadpool

from app.bounds import Page
from app.db import SessionDep
from app.forms import (
    FORM_FIELDS,
    SECTIONS,
    by_field,
    check_form,
    config_to_values,
    default_values,
    family_fields,
    family_table,
    form_to_config,
    form_values,
    notices_by_field,
)
from app.lifecycle import LIVE, RunStatus
from app.models import RUN_STATUSES
from app.pairing import SUFFIX, Variant, variant_config
from app.runs import (
    NAME_MAX,
    RunNotFound,
    create_run,
    get_run,
    list_runs,
)
from app.studies import SEEDS_MAX, StudyProblems, create_study
from trainer.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"  # mounted at /static by app.main

PAGE_SIZE = 50
STUDY_FIELDS = ("study", "study_seeds")  # the form's "Run as a study" and its number of seeds
STUDY_SEEDS = 3
CHART_METRICS = ("loss", "diffusion_loss", "layersync_loss", "layersync_similarity")
RUN_METRICS = CHART_METRICS + ("val_diffusion_loss",)
COMPARE_METRICS = ("diffusion_loss", "val_diffusion_loss", "sample_accuracy", "loss", "layersync_loss",
                   "layersync_similarity")  # sample_accuracy: the demo's samples read by a digit classifier


def _num(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back without a zone; they were stored as UTC
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


# autoescape on for every template, whatever its file name: run names and config text are user input
templates = Jinja2Templates(env=Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True))
templates.env.filters.update(
    num=_num,
    when=lambda value: _utc(value).strftime("%Y-%m-%d %H:%M UTC") if value else "",
    iso=lambda value: _utc(value).isoformat() if value else "",
)
templates.env.globals.update(known_statuses=RUN_STATUSES, live_statuses=LIVE, statuses=RunStatus)

router = APIRouter(include_in_schema=False)


def _render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def _is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def _item(run) -> dict:
    """What a page shows of a run: the run, its config and its latest values (with the step)."""
    return {"run": run, "config": run.config or {}, "metrics": {**(run.last_metrics or {}), "step": run.step}}


def _not_found(request: Request, exc: RunNotFound) -> HTMLResponse:
    return _render(request, "error.html", status_code=404, title="Run not found", message=str(exc))


# --- runs list ---------------------------------------------------------------------------------------

def _runs_context(session, page: int) -> dict:
    listing = list_runs(session, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    items = [_item(run) for run in listing.runs]
    return {
        "items": items,
        "page": page,
        "has_more": listing.offset + len(items) < listing.total,
        "any_live": any(item["run"].status in LIVE for item in items),
        "list_metrics": CHART_METRICS,
    }


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request, session: SessionDep, page: Page = 1):
    """The runs list, newest first."""
    return _render(request, "runs.html", nav="runs", **_runs_context(session, page))


@router.get("/partials/runs", response_class=HTMLResponse)
def runs_rows(request: Request, session: SessionDep, page: Page = 1):
    """The runs table's rows (polled while a run is live)."""
    return _render(request, "partials/runs_rows.html", **_runs_context(session, page))


# --- new run -----------------------------------------------------------------------------------------

def _form(request: Request, *, values: dict, errors: dict, name: str = "", status_code: int = 200,
          study: dict | None = None) -> HTMLResponse:
    context = {
        "sections": SECTIONS, "fields": FORM_FIELDS, "values": values, "errors": errors, "run_name": name,
        "study": study or {"on": False, "seeds": str(STUDY_SEEDS)}, "seeds_max": SEEDS_MAX,
        "notices": notices_by_field(form_to_config(values)[1]), "family": family_fields(values.get("model_family", "")),
        "defaults": default_values(), "families": family_table(), "name_max": NAME_MAX, "nav": "new",
    }
    template = "partials/run_form.html" if _is_htmx(request) else "new_run.html"
    return _render(request, template, status_code=status_code, **context)


async def _posted(request: Request) -> dict[str, str]:
    """The posted config fields (the "Run as a study" choice is not the config's: see _study_choice)."""
    return {key: value for key, value in (await request.form()).multi_items()
            if isinstance(value, str) and key not in STUDY_FIELDS}


async def _study_choice(request: Request) -> dict:
    form = await request.form()
    return {"on": form.get("study") == "on", "seeds": str(form.get("study_seeds", STUDY_SEEDS)).strip()}


def _queue_study(session, settings, *, name: str | None, config: dict, choice: dict) -> str:
    """The form's study: its default arms, seeds counted up from the form's seed; the study page's URL.
    Raises ConfigError with each problem under its form field."""
    count = int(choice["seeds"]) if choice["seeds"].isdigit() else 0
    if not 2 <= count <= SEEDS_MAX:
        raise ConfigError([("study_seeds", f"the number of seeds must be a whole number from 2 to {SEEDS_MAX}, got "
                                           f"{choice['seeds']!r}: 3 or more give an interval worth reading")])
    first = config.get("seed", 0)
    seeds = [first + i for i in range(count)] if isinstance(first, int) else [first]
    try:
        study = create_study(session, name=name, config=config, seeds=seeds, runs_dir=settings.runs_dir,
                             model_roots=settings.model_roots)
    except StudyProblems as exc:  # under the field each names: a config key, the seeds, the name
        fields = {"seeds": "seed", "name": "name"}
        raise ConfigError([(fields.get(loc[0]) or (str(loc[-1]) if loc[0] == "arms" and len(loc) > 2 else
                                                    str(loc[1]) if loc[0] == "config" and len(loc) > 1 else ""), message)
                           for loc, message in exc.problems]) from None
    return f"/studies/{study.id}"


@router.get("/runs/new", response_class=HTMLResponse)
def new_run_page(request: Request):
    """The new-run form with the schema's defaults."""
    return _form(request, values=default_values(), errors={})


@router.post("/runs/new", response_class=HTMLResponse)
async def new_run_submit(request: Request, session: SessionDep):
    """Create a run from the form: 303 to its page, or 422 with the form and a message by each field."""
    posted, study = await _posted(request), await _study_choice(request)
    name, config = form_to_config(posted)
    errors: dict[str, str] = {}
    settings = request.app.state.settings
    try:
        # in a thread: a write may wait for SQLite's lock, and the event loop serves live streams
        if study["on"]:
            url = await run_in_threadpool(_queue_study, session, settings, name=name, config=config, choice=study)
        else:
            run = await run_in_threadpool(
                create_run, session, config=config, name=name, runs_dir=settings.runs_dir,
                model_roots=settings.model_roots,
            )
            url = f"/runs/{run.id}"
    except ConfigError as exc:  # the config's problems, and a name too long (under "name")
        errors = by_field(exc.errors)
    if errors:
        return _form(request, values=form_values(posted), errors=errors, name=name or "", status_code=422, study=study)
    if _is_htmx(request):
        return Response(headers={"HX-Redirect": url})  # a whole new page, not a swap into the form
    return RedirectResponse(url, status_code=303)


@router.post("/runs/new/validate", response_class=HTMLResponse)
async def new_run_validate(request: Request):
    """The form's checks while the user fills it in: each field's problems and notices (htmx swaps them
    in by their ids), the same words as a submit, the API and the CLI; nothing is queued."""
    settings = request.app.state.settings
    check = await run_in_threadpool(
        check_form, await _posted(request), model_roots=settings.model_roots, runs_dir=settings.runs_dir
    )
    return _render(request, "partials/form_checks.html", fields=FORM_FIELDS, errors=check.errors, notices=check.notices)


@router.post("/runs/new/export")
async def new_run_export(request: Request) -> Response:
    """The form as a config file: what a submit would send the schema (form_to_config), as JSON to download."""
    name, config = form_to_config(await _posted(request))
    filename = re.sub(r"[^\w.-]+", "-", name or "layersync-config").strip("-") or "layersync-config"
    body = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return Response(body, media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.json"'})


@router.get("/runs/new/from/{run_id}", response_class=HTMLResponse)
def new_run_from(request: Request, session: SessionDep, run_id: int, variant: Variant = "again"):
    """The form filled with an earlier run's config: the same again, its baseline (LayerSync off) or
    with LayerSync on, everything else equal, the seed included (app.pairing)."""
    try:
        run = get_run(session, run_id=run_id)
    except RunNotFound as exc:
        return _not_found(request, exc)
    config, problems = variant_config(run.config or {}, variant)
    return _form(request, values=config_to_values(config), errors=problems, name=f"{run.name} ({SUFFIX[variant]})")


# --- compare -----------------------------------------------------------------------------------------

@router.get("/compare", response_class=HTMLResponse)
def compare_page(
    request: Request,
    session: SessionDep,
    run: Annotated[list[int], Query()] = [],  # noqa: B006 - FastAPI copies query defaults
    metric: Literal[COMPARE_METRICS] = "diffusion_loss",
):
    """Pick runs and overlay one metric of theirs on one chart."""
    items = [_item(r) for r in list_runs(session, limit=100).runs]
    chosen = []
    for run_id in dict.fromkeys(run):  # each run once, in the order asked
        try:
            chosen.append(_item(get_run(session, run_id=run_id)))
        except RunNotFound as exc:
            return _not_found(request, exc)
    chart_runs = [{"id": item["run"].id, "label": f"{item['run'].name} (#{item['run'].id})"} for item in chosen]
    return _render(
        request, "compare.html", nav="compare", items=items, chosen=chosen, selected_ids=set(run),
        metric=metric, compare_metrics=COMPARE_METRICS, chart_runs=chart_runs,
    )
