"""Every integer a route takes (path, query, header) at the edges of the 64-bit range and beyond: an
answer in words (422 naming the parameter, or 404 for a run id that names no run), never a 500.

The routes are read from the routers, so a route added later is tested too, and one whose integer is
neither bounded (app.bounds) nor a run id fails here.
"""

import tempfile
from pathlib import Path

import pytest
from annotated_types import Ge, Le
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.main import create_app
from app.metrics import record_points
from app.models import SQL_INT_MAX
from app.routes import api, auth, checkpoints, pages, run_page
from tests.utils.server import app_settings

EDGES = [0, -1, SQL_INT_MAX - 1, SQL_INT_MAX, SQL_INT_MAX + 1, 10**30, -(10**30), "x", "1.5", ""]
RUN_IDS = ("run_id", "run")  # unbounded on purpose: any whole number is a 404 unless it names a run
TOP_STEPS = [5, SQL_INT_MAX - 1, SQL_INT_MAX]  # a series that reaches the largest step a column holds


def _params(dependant):
    for where in ("path", "query", "header"):
        for param in getattr(dependant, f"{where}_params"):
            yield where, param
    for dependency in dependant.dependencies:
        yield from _params(dependency)


def _integer_params():
    for router in (api.router, pages.router, auth.router, run_page.router, checkpoints.router):
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            for where, param in _params(route.dependant):
                if "int" in str(param.field_info.annotation):
                    for method in sorted(route.methods):
                        yield method, route.path_format, where, param


def _bounds(param) -> tuple[int | None, int | None]:
    metadata = param.field_info.metadata
    low = next((item.ge for item in metadata if isinstance(item, Ge)), None)
    high = next((item.le for item in metadata if isinstance(item, Le)), None)
    return low, high


CASES = []
for method, path, where, param in _integer_params():
    low, high = _bounds(param)
    values = EDGES + [v for v in (low, high) if v is not None] + [v + d for v, d in ((low, -1), (high, 1)) if v is not None]
    for value in dict.fromkeys(values):
        if where == "path" and value == "":
            continue  # an empty segment is another URL
        CASES.append(pytest.param(method, path, where, param, value, id=f"{method} {path} {where}:{param.alias}={value}"))


@pytest.fixture(scope="module")
def client():
    """One app for the module, with an ended run (id 1) whose series reaches the largest step."""
    with tempfile.TemporaryDirectory() as data_dir, TestClient(create_app(app_settings(Path(data_dir)))) as client:
        run = client.post("/api/runs", json={}).json()
        assert run["id"] == 1
        with Session(client.app.state.engine) as session:
            record_points(session, run_id=1, points=[(step, "loss", float(i)) for i, step in enumerate(TOP_STEPS)])
            session.commit()
        assert client.post("/api/runs/1/cancel").status_code == 200  # ended: its event stream closes
        yield client


def test_every_integer_is_bounded_or_is_a_run_id():
    unbounded = [f"{path} {param.alias}" for _, path, _, param in _integer_params()
                 if None in _bounds(param) and param.alias not in RUN_IDS]
    assert unbounded == [], "bound these with a type from app.bounds, so that arithmetic on them stays in 64 bits"


@pytest.mark.parametrize("method, path, where, param, value", CASES)
def test_an_integer_at_the_edges_is_answered_in_words_never_500(client, method, path, where, param, value):
    url = path.replace("{path}", "samples/none.png")
    url = url.replace("{run_id}", str(value) if where == "path" and param.alias == "run_id" else "1")
    query = {param.alias: value} if where == "query" else {}
    headers = {param.alias: str(value)} if where == "header" else {}
    response = client.request(method, url, params=query, headers=headers, follow_redirects=False)
    low, high = _bounds(param)
    whole = isinstance(value, int)
    refused = not whole or (low is not None and value < low) or (high is not None and value > high)
    assert response.status_code < 500, response.text
    if refused:
        assert response.status_code == 422, response.text
        (problem,) = response.json()["detail"]
        assert problem["loc"][:2] == [where, param.alias] and " must be " in problem["msg"], problem
    else:
        assert response.status_code != 422, response.text
    if where == "path" and whole:  # none of them is run 1
        assert response.status_code == 404 and f"run {value} does not exist" in response.text


@pytest.mark.parametrize("since, steps", [
    (None, TOP_STEPS), (0, TOP_STEPS), (4, TOP_STEPS), (5, TOP_STEPS[1:]), (SQL_INT_MAX - 2, TOP_STEPS[1:]),
    (SQL_INT_MAX - 1, TOP_STEPS[2:]), (SQL_INT_MAX, []),
])
def test_metrics_after_any_step_up_to_the_largest_answer_the_steps_after_it(client, since, steps):
    params = {"names": "loss"} | ({} if since is None else {"since": since})
    response = client.get("/api/runs/1/metrics", params=params)
    assert response.status_code == 200 and response.json()["series"]["loss"]["steps"] == steps
    fewest = client.get("/api/runs/1/metrics", params=params | {"max_points": 2})  # downsampled: the extremes
    assert fewest.status_code == 200 and set(fewest.json()["series"]["loss"]["steps"]) <= set(steps)
