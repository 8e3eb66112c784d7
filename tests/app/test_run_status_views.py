"""What a user sees of a run's status: its place in the queue, what resuming it offers, and its
status events in the order things happened."""

import json

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.eventlog import events_after
from app.main import create_app
from app.models import Run, RunStatus, utcnow
from tests.utils.factories import SEED_SNIPPET
from tests.utils.server import app_settings, wait_for

PHASES = ("queued", "starting", "running")  # what a status event's status says, in the order a run goes


def events(client, run_id: int) -> list[dict]:
    """The run's stored events, oldest first."""
    with Session(client.app.state.engine) as session:
        return [json.loads(row.data) for row in events_after(session, run_id=run_id, after=0)]


def test_a_queued_runs_page_shows_its_place_in_the_queue_and_the_order_it_follows(client):
    first, second = (client.post("/api/runs", json={}).json() for _ in range(2))  # no worker slots: both wait
    page = client.get(f"/runs/{second['id']}").text
    assert "In the queue" in page and "number 2" in page
    assert "runs start in the order they were queued" in page
    assert "It leaves the queue at once" in page and "keeps a checkpoint" not in page  # the cancel says what it does
    assert "Queued runs start in the order they were queued" in client.get("/").text
    assert "number 1" in client.get(f"/partials/runs/{first['id']}/status").text


def test_a_run_cancelled_while_queued_offers_to_queue_it_again_not_to_resume(client):
    run = client.post("/api/runs", json={}).json()
    client.post(f"{run['url']}/cancel")
    page = client.get(f"/runs/{run['id']}").text
    assert "Resume from the latest checkpoint" not in page and "Queue it again" in page
    again = client.post(f"{run['url']}/resume")
    assert again.status_code == 200 and again.json()["status"] == "queued" and again.json()["queue_position"] == 1
    assert events(client, run["id"])[-1]["message"] == "queued again: it was cancelled before it started"


def test_the_resume_button_says_where_the_run_would_start(client, settings):
    origin = str(settings.runs_dir / "9" / "checkpoints" / "step_0000010")
    with Session(client.app.state.engine) as session:
        for run_id, config in ((1, {}), (2, {}), (3, {"resume_from_checkpoint": origin})):
            session.add(Run(id=run_id, name=f"failed {run_id}", status=RunStatus.FAILED, config=config,
                            started_at=utcnow(), finished_at=utcnow(), output_dir=str(settings.runs_dir / str(run_id))))
        session.commit()
    own = settings.runs_dir / "1" / "checkpoints" / "step_0000004"
    own.mkdir(parents=True)
    (own / "state.json").write_text('{"step": 4}')
    assert "Resume from the latest checkpoint" in client.get("/runs/1").text
    assert "Start again from step 0" in client.get("/runs/2").text
    assert "Start again from the checkpoint it started from" in client.get("/runs/3").text
    client.post("/api/runs/2/resume")
    assert events(client, 2)[-1]["message"] == "queued to start again from step 0: it has no checkpoint"


def test_resuming_a_queued_run_is_refused_with_why(client):
    run = client.post("/api/runs", json={}).json()
    refused = client.post(f"{run['url']}/resume")
    assert refused.status_code == 409 and refused.json()["detail"] == (
        f"run {run['id']} is queued: only a failed or cancelled run can be resumed; it is waiting in the queue already")


def test_a_started_runs_status_events_read_in_the_order_things_happened(tmp_path):
    settings = app_settings(tmp_path / "data", worker_slots=1, gpus="3")
    with TestClient(create_app(settings)) as client:
        run = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=3)).json()
        assert wait_for(client, run["id"], timeout=600)["status"] == "completed"
        stored = events(client, run["id"])
    statuses = [event for event in stored if event["event"] == "status"]
    phases = [PHASES.index(event["status"]) for event in statuses]
    assert phases == sorted(phases), [event["status"] for event in statuses]  # never back to an earlier phase
    assert statuses[0]["message"] == "starting a worker on GPU 3"  # the server's claim
    assert statuses[1]["message"].startswith("worker started (pid ")  # its launch; then the worker's own
    assert [event["status"] for event in statuses[2:]] == ["starting", "running"]
    assert stored[-1]["event"] == "end" and stored[-1]["status"] == "completed"
