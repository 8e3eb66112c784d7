"""A schema fuzzer over the JSON API: schemathesis generates requests from /openapi.json (valid and
invalid ones) and every answer must be no server error and must match the schema the API declares.

Bounded and deterministic: a fixed number of examples per operation, derandomized. The app runs
in-process with a temporary data dir and no worker slots, so the runs it creates never train.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis", reason="the fuzzer needs schemathesis: pip install -e '.[test]'")
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance
from schemathesis.python import asgi
from sqlmodel import Session

from app.main import create_app
from app.metrics import record_points
from tests.utils.server import app_settings

EXAMPLES_PER_OPERATION = 25


# made at import: the schema's operations become the test's parameters at collection
DATA_DIR = Path(tempfile.mkdtemp(prefix="layersync-fuzz-"))
APP = create_app(app_settings(DATA_DIR / "data"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
TOP_STEP = 2**63 - 1  # the largest step a column holds: the module's run has points there


@schema.hook("map_case")
def reads_name_the_real_run(context, case):
    """A read names the module's run: a random id names none, and the route answers 404 before it reads
    its query, so the query's edges (a since near 2**63) never met a real run. Unknown and out-of-range
    ids are tests/app/test_bounds.py's part. A write never names it (a delete would leave nothing to read)."""
    if "run_id" in (case.path_parameters or {}):
        if case.method.upper() == "GET":
            case.path_parameters["run_id"] = 1
        elif case.path_parameters["run_id"] == 1:
            case.path_parameters["run_id"] = 0
    return case


@pytest.fixture(scope="module", autouse=True)
def running_app():
    """The app's lifespan (its database and the state routes use) for the whole module: schemathesis'
    own, which its calls share (a second one would be a second server on the data dir, and refused)."""
    with asgi.get_client(APP) as client:
        assert client.post("/api/runs", json={}).json()["id"] == 1  # the run reads_name_the_real_run names
    with Session(APP.state.engine) as session:
        record_points(session, run_id=1, points=[(5, "loss", 1.0), (TOP_STEP - 1, "loss", 2.0), (TOP_STEP, "loss", 0.5)])
        session.commit()
    yield
    asgi.shutdown_lifespans()
    shutil.rmtree(DATA_DIR, ignore_errors=True)


# the event stream of a queued run stays open until the run ends, which it never does without a
# worker slot: it is tested by tests/app/test_sse.py instead
@schema.exclude(path_regex=r"/events$").parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_the_api_answers_any_request_as_its_schema_says(case):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, status_code_conformance])
