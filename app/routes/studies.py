"""Studies: the JSON API under /api/studies and the pages /studies and /studies/{id}."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from app import errors, studies
from app.db import SessionDep
from app.report import DEFAULT_METRIC, higher_is_better
from app.routes.pages import templates

router = APIRouter(tags=["studies"])

STUDY_ERRORS = {404: {"model": errors.Message, "description": "No such study"}}
DELETE_ERRORS = {**STUDY_ERRORS, 409: {"model": errors.Message, "description": "One of its runs is running"}}
MetricParam = Annotated[str | None, Query(max_length=200, description=f"The metric to report; default {DEFAULT_METRIC}.")]


class StudyCreate(BaseModel):
    name: str | None = Field(None, description="Default: the LayerSync setting of its first arm, vs the baseline.")
    config: dict[str, Any] = Field(default_factory=dict, description="The base flat run config (as POST /api/runs takes).")
    # checked by app.studies with the schema's own words for a seed, every problem at once
    seeds: list[Any] = Field(default_factory=lambda: [0, 1, 2], description="One run per arm and seed.")
    arms: dict[str, Any] | None = Field(None, description="Arm name → config overrides; default "
                                        '{"layersync": {}, "baseline": {"layersync_enabled": false}}.')


def _problems(exc: studies.StudyProblems) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", *loc], "msg": message} for loc, message in exc.problems]},
                        status_code=422)


@router.post("/api/studies", status_code=201, responses=errors.INVALID)
def create_study(body: StudyCreate, request: Request, response: Response, session: SessionDep):
    """Validate a study and queue one run per (arm, seed), paired by seed (422: every problem, naming its arm)."""
    settings = request.app.state.settings
    try:
        study = studies.create_study(session, name=body.name, config=body.config, seeds=body.seeds, arms=body.arms,
                                     runs_dir=settings.runs_dir, model_roots=settings.model_roots)
    except studies.StudyProblems as exc:
        return _problems(exc)
    response.headers["Location"] = f"/api/studies/{study.id}"
    return studies.study_public(session, study)


@router.get("/api/studies")
def list_studies(session: SessionDep) -> list[dict]:
    """The studies, newest first, with their status."""
    return [studies.study_summary(session, study) for study in studies.list_studies(session)]


@router.get("/api/studies/{study_id}", responses={**STUDY_ERRORS, **errors.INVALID})
def get_study(study_id: int, session: SessionDep, metric: MetricParam = None):
    """A study: its runs, status and effect report (null until one seed has all its arms completed)."""
    study = studies.get_study(session, study_id=study_id)
    try:
        return studies.study_public(session, study, metric=metric)
    except studies.MetricNotLogged as exc:
        return JSONResponse({"detail": [{"loc": ["query", "metric"], "msg": str(exc)}]}, status_code=422)


@router.delete("/api/studies/{study_id}", status_code=204, responses={**DELETE_ERRORS, **errors.INVALID})
def delete_study(study_id: int, session: SessionDep) -> None:
    """Delete a study and all its runs; refused (409) while one of them is running: cancel it first."""
    studies.delete_study(session, study_id=study_id)


# --- pages -------------------------------------------------------------------------------------------

@router.get("/studies", response_class=HTMLResponse, include_in_schema=False)
def studies_page(request: Request, session: SessionDep):
    """The studies list."""
    items = [studies.study_summary(session, study) for study in studies.list_studies(session)]
    return templates.TemplateResponse(request, "studies.html", {"nav": "studies", "items": items})


@router.get("/studies/{study_id}", response_class=HTMLResponse, include_in_schema=False)
def study_page(request: Request, session: SessionDep, study_id: int, metric: MetricParam = None):
    """A study: the report in words and numbers, and each arm's curve."""
    try:
        study = studies.get_study(session, study_id=study_id)
        view = studies.study_public(session, study, metric=metric, curves=True)
    except (studies.StudyNotFound, studies.MetricNotLogged) as exc:
        status = 404 if isinstance(exc, studies.StudyNotFound) else 422
        return templates.TemplateResponse(request, "error.html", {"title": "Study not shown", "message": str(exc)},
                                          status_code=status)
    context = {"nav": "studies", "study": view, "chart": svg_chart(view["curves"], list(view["arms"])),
               "higher": higher_is_better(view["metric"])}
    return templates.TemplateResponse(request, "study.html", context)


@router.post("/studies/{study_id}/delete", include_in_schema=False)
def delete_study_page(request: Request, session: SessionDep, study_id: int):
    """The study page's Delete button (a plain form): back to the studies list, or the reason it was refused."""
    try:
        studies.delete_study(session, study_id=study_id)
    except (studies.StudyNotFound, studies.RunStateError) as exc:
        status = 404 if isinstance(exc, studies.StudyNotFound) else 409
        return templates.TemplateResponse(request, "error.html", {"title": "Study not deleted", "message": str(exc)},
                                          status_code=status)
    return RedirectResponse("/studies", status_code=303)


# --- the curves, drawn on the server -----------------------------------------------------------------

WIDTH, HEIGHT, PAD_LEFT, PAD_RIGHT, PAD_Y = 640, 260, 64, 16, 24
COLOURS = ("#1f6feb", "#9a6700", "#1a7f37", "#cf222e", "#8250df", "#bf3989")


def svg_chart(curves: dict[str, dict], arms: list[str]) -> dict | None:
    """Each arm's mean as a line and its band (lowest to highest seed) as a shaded area, in SVG coordinates;
    a series of one step is drawn as its point. None without points."""
    if not curves:
        return None
    steps = [step for curve in curves.values() for step in curve["steps"]]
    values = [value for curve in curves.values() for value in curve["low"] + curve["high"]]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1

    def x(step):
        return PAD_LEFT + (step - x0) / ((x1 - x0) or 1) * (WIDTH - PAD_LEFT - PAD_RIGHT)

    def y(value):
        return PAD_Y + (y1 - value) / (y1 - y0) * (HEIGHT - 2 * PAD_Y)

    lines = []
    for index, arm in enumerate(arm for arm in arms if arm in curves):
        curve = curves[arm]
        points = list(zip(curve["steps"], curve["mean"], curve["low"], curve["high"], strict=True))
        mean = " ".join(f"{x(s):.1f},{y(m):.1f}" for s, m, _, _ in points)
        band = " ".join([f"{x(s):.1f},{y(h):.1f}" for s, _, _, h in points]
                        + [f"{x(s):.1f},{y(lo):.1f}" for s, _, lo, _ in reversed(points)])
        dots = [{"x": f"{x(s):.1f}", "y": f"{y(m):.1f}"} for s, m, _, _ in points] if len(points) < 3 else []
        lines.append({"arm": arm, "colour": COLOURS[index % len(COLOURS)], "mean": mean, "band": band, "dots": dots,
                      "seeds": curve["seeds"]})
    ticks = [{"y": f"{y(v):.1f}", "label": f"{v:.4g}"} for v in (y0, (y0 + y1) / 2, y1)]
    return {"width": WIDTH, "height": HEIGHT, "lines": lines, "ticks": ticks, "left": PAD_LEFT,
            "x_labels": [{"x": f"{x(s):.1f}", "label": str(s)} for s in dict.fromkeys((x0, x1))],
            "bottom": HEIGHT - PAD_Y}
