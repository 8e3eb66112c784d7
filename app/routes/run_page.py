"""The run page and the partials it swaps: status card (progress, device), samples by step, checkpoints,
log; its Cancel, Resume and Delete. Rendered with the helpers of app.routes.pages (included after it, so
``/runs/new`` is matched before ``/runs/{run_id}``)."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.db import SessionDep
from app.downloads import run_checkpoints
from app.eventlog import last_seq
from app.lifecycle import RESUMABLE, RunStatus
from app.pairing import offers
from app.progress import run_progress
from app.routes.pages import RUN_METRICS, _is_htmx, _item, _not_found, _render
from app.runs import (
    RunNotFound,
    RunStateError,
    cancel_run,
    delete_run,
    get_run,
    log_tail,
    queue_positions,
    resume_offer,
    resume_run,
    run_id_in_range,
    run_warnings,
)
from app.samples import chosen as chosen_sample
from app.samples import layout_words, run_samples

router = APIRouter(include_in_schema=False)

LOG_LINES = 60


# what each view reads beyond the status card's facts: a card refreshed every few seconds reads only its own
PARTS = {
    "run.html": ("progress", "samples", "checkpoints", "log"),
    "partials/run_status.html": ("progress",),
    "partials/run_sample.html": ("samples",),
    "partials/run_checkpoints.html": ("checkpoints",),
    "partials/run_log.html": ("log",),
}


def _samples_context(session, run, request: Request) -> dict:
    samples = run_samples(session, run)
    index = chosen_sample(samples, request.query_params.get("sample"), request.query_params.get("newest"))
    sample = samples[index] if index is not None else None
    return {"samples": samples, "sample_index": index, "sample": sample,
            "sample_layout": layout_words(run.config or {}, len(sample["prompts"]) if sample else 0)}


def _run_context(session, run, request: Request, parts=PARTS["run.html"]) -> dict:
    queued = run.status == RunStatus.QUEUED
    context = {
        **_item(run),
        "queue_position": queue_positions(session).get(run.id) if queued else None,
        "resume_label": resume_offer(run) if run.status in RESUMABLE else None,
        "new_run_offers": offers(run.id, run.config or {}),
        "run_metrics": RUN_METRICS,
        "chart_metrics": RUN_METRICS,  # the validation loss too: drawn as its points (few, unsmoothed)
        "deletable": run.status in RESUMABLE or run.status == RunStatus.COMPLETED,
    }
    if "progress" in parts:
        context["progress"] = run_progress(session, run)
    if "samples" in parts:
        context.update(_samples_context(session, run, request))
    if "checkpoints" in parts:
        context["checkpoints"] = run_checkpoints(run.id, run.output_dir)
    if "log" in parts:
        context["log_lines"] = log_tail(run.output_dir, LOG_LINES) if run.output_dir else []
        context["warnings"] = run_warnings(session, run_id=run.id)
    return context


def _run_view(request: Request, session, run_id: int, template: str, status_code: int = 200, **extra) -> HTMLResponse:
    """A run's page or one of its partials; the 404 page for an unknown run."""
    try:
        run = get_run(session, run_id=run_id)
    except RunNotFound as exc:
        return _not_found(request, exc)
    context = _run_context(session, run, request, PARTS[template])
    return _render(request, template, status_code=status_code, **context, **extra)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, session: SessionDep, run_id: int):
    """One run: status card, live chart, samples and log."""
    # the stream starts after the newest stored event (read first: the chart's history, loaded
    # later from the API, holds at least as much; the chart drops the steps it already has);
    # an id beyond SQLite's integers cannot be bound: no such run (the 404 page), not a 500
    since = last_seq(session, run_id=run_id) if run_id_in_range(run_id) else 0
    return _run_view(request, session, run_id, "run.html", nav="runs", since=since)


@router.post("/runs/{run_id}/cancel", response_class=HTMLResponse)
def run_cancel(request: Request, session: SessionDep, run_id: int):
    """Cancel a run, then show its status (the card for htmx, the page otherwise)."""
    try:
        cancel_run(session, run_id=run_id)
    except RunNotFound as exc:
        return _not_found(request, exc)
    except RunStateError:
        pass  # it ended meanwhile: the card shows how
    if _is_htmx(request):
        return _run_view(request, session, run_id, "partials/run_status.html")
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/resume", response_class=HTMLResponse)
def run_resume(request: Request, session: SessionDep, run_id: int):
    """Queue a failed or cancelled run again from its latest checkpoint, then show its page (live again)."""
    try:
        resume_run(session, run_id=run_id)
    except RunNotFound as exc:
        return _not_found(request, exc)
    except RunStateError:
        pass  # resumed meanwhile, from another tab: the page shows how it stands
    if _is_htmx(request):
        return Response(headers={"HX-Redirect": f"/runs/{run_id}"})  # the page, not the card: its stream reopens
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/delete", response_class=HTMLResponse)
async def run_delete(request: Request, session: SessionDep, run_id: int):
    """Delete a finished run with its folder: asks first without JavaScript (htmx asks with hx-confirm),
    then 303 to the runs list; when it cannot be deleted now, the reason on its page (409) or its card (htmx)."""
    confirmed = _is_htmx(request) or (await request.form()).get("confirm") == "yes"
    try:
        run = get_run(session, run_id=run_id)
        if confirmed:
            await run_in_threadpool(delete_run, session, run_id=run_id)
    except RunNotFound as exc:
        return _not_found(request, exc)
    except RunStateError as exc:  # the card says why (htmx swaps only a 2xx card in: base.html's htmx-config)
        htmx = _is_htmx(request)
        template = "partials/run_status.html" if htmx else "run.html"
        return _run_view(request, session, run_id, template, status_code=200 if htmx else 409, nav="runs", since=0,
                         delete_error=str(exc))
    if not confirmed:
        return _render(request, "run_delete.html", nav="runs", run=run, checkpoints=run_checkpoints(run.id, run.output_dir))
    if _is_htmx(request):
        return Response(headers={"HX-Redirect": "/"})
    return RedirectResponse("/", status_code=303)


@router.get("/partials/runs/{run_id}/checkpoints", response_class=HTMLResponse)
def run_checkpoints_partial(request: Request, session: SessionDep, run_id: int):
    """The run's checkpoints with their downloads."""
    return _run_view(request, session, run_id, "partials/run_checkpoints.html")


@router.get("/partials/runs/{run_id}/status", response_class=HTMLResponse)
def run_status_partial(request: Request, session: SessionDep, run_id: int):
    """The run's status card."""
    return _run_view(request, session, run_id, "partials/run_status.html")


@router.get("/partials/runs/{run_id}/log", response_class=HTMLResponse)
def run_log_partial(request: Request, session: SessionDep, run_id: int):
    """The run's log tail."""
    return _run_view(request, session, run_id, "partials/run_log.html")


@router.get("/partials/runs/{run_id}/sample", response_class=HTMLResponse)
def run_sample_partial(request: Request, session: SessionDep, run_id: int):
    """The run's samples: the newest, or the one ``?sample=`` picks (app.samples.chosen)."""
    return _run_view(request, session, run_id, "partials/run_sample.html")
