import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, update

from app.eventlog import last_seq
from app.main import create_app
from app.models import Run
from tests.utils.factories import SEED_SNIPPET


def messages(response) -> dict[str, str]:
    """{key: message} of a 422, keyed by the last part of each error's loc."""
    assert response.status_code == 422, response.text
    return {str(error["loc"][-1]): error["msg"] for error in response.json()["detail"]}


def test_the_reference_snippet_posted_as_is_queues_a_run_on_the_demo(client, settings):
    response = client.post("/api/runs", json=SEED_SNIPPET)
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == run["url"] == f"/api/runs/{run['id']}"
    assert run["status"] == "queued" and run["name"] == "LayerSync 8→16 λ 0.2"
    assert run["config"]["model_family"] == "demo" and run["config"]["layersync_teacher_block"] == 16
    assert run["config"]["output_dir"] == str(settings.runs_dir / str(run["id"]))  # the server's folder
    assert not {"output_dir", "pid", "pid_started", "slot", "events_offset"} & set(run)  # the server's own columns
    assert client.get(run["url"]).json() == run


def test_a_name_travels_as_a_query_parameter_and_the_body_stays_the_config(client):
    run = client.post("/api/runs", params={"name": "<b>baseline</b>"}, json={}).json()
    assert run["name"] == "<b>baseline</b>" and run["config"]["layersync_enabled"] is False
    assert client.post("/api/runs", json={}).json()["name"] == "LayerSync off"
    assert "keep it to 200 characters" in messages(client.post("/api/runs", params={"name": "x" * 201}, json={}))["name"]


def test_config_errors_are_422_with_the_schemas_own_messages_and_no_run_row(client):
    bad = dict(SEED_SNIPPET, layersync_teacher_block=17, layersync_lambda=0, max_train_steps="many", layersync_enabld=True)
    errors = messages(client.post("/api/runs", json=bad))
    assert errors == {  # every problem at once: the key's own, the rules between keys, the model's depth
        "layersync_enabld": "unknown config key 'layersync_enabld': did you mean layersync_enabled?",
        "max_train_steps": "must be a whole number, got 'many'",
        "layersync_lambda": "LayerSync weight must be > 0, got 0.0: keep the default 0.2 if unsure, or turn LayerSync off",
        "layersync_teacher_block": "teacher block 17 does not exist: this model has 16 blocks, choose 1–16",
    }
    errors = messages(client.post("/api/runs", json=dict(SEED_SNIPPET, layersync_teacher_block=17)))
    assert errors["layersync_teacher_block"] == "teacher block 17 does not exist: this model has 16 blocks, choose 1–16"
    assert client.get("/api/runs").json()["total"] == 0


@pytest.mark.parametrize(
    "body, words",
    [
        (b'{"layersync_enabled": tru', "the body is not valid JSON"),
        (b"", "the body is empty"),
        (b"[1, 2]", "must be a JSON object of keys and values"),
        (b'"text"', "must be a JSON object of keys and values"),
    ],
)
def test_malformed_bodies_are_422_with_what_to_send(client, body, words):
    response = client.post("/api/runs", content=body, headers={"content-type": "application/json"})
    (message,) = messages(response).values()
    assert words in message and "e.g. {" in message
    assert client.get("/api/runs").json()["total"] == 0


@pytest.mark.parametrize("method, path", [
    ("get", "/api/runs/99"), ("get", "/api/runs/99/metrics"), ("get", "/api/runs/99/events"),
    ("get", "/api/runs/99/log"), ("post", "/api/runs/99/cancel"), ("delete", "/api/runs/99"),
])
def test_unknown_run_ids_are_404_with_where_to_look(client, method, path):
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response.json()["detail"] == "run 99 does not exist: list the runs with GET /api/runs"


def test_bad_ids_and_parameters_are_422_in_words(client):
    assert messages(client.get("/api/runs/abc")) == {"run_id": "run_id must be a whole number, got 'abc'"}
    assert client.get(f"/api/runs/{2**70}").status_code == 404  # beyond SQLite's integers: no such run, not a crash
    assert messages(client.post("/api/runs", content=b"{}", headers={"content-type": "text/plain"}))["body"].startswith(
        "the body was not sent as JSON: send it with the header Content-Type: application/json"
    )
    assert messages(client.get("/api/runs", params={"limit": 0})) == {"limit": "limit must be at least 1, got 0"}
    run = client.post("/api/runs", json={}).json()
    assert "max_points must be at least 2" in messages(client.get(f"{run['url']}/metrics?max_points=1"))["max_points"]
    status = messages(client.get("/api/runs", params={"status": "done"}))["status"]
    assert status.startswith("status must be one of") and "'queued'" in status


def test_runs_are_listed_newest_first_a_page_at_a_time(client):
    ids = [client.post("/api/runs", json={}).json()["id"] for _ in range(5)]
    page = client.get("/api/runs", params={"limit": 2, "offset": 1}).json()
    assert [run["id"] for run in page["runs"]] == ids[::-1][1:3]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 1)
    assert client.get("/api/runs", params={"status": "running"}).json()["total"] == 0


def test_a_queued_run_is_cancelled_at_once_and_then_cannot_be_cancelled_again(client):
    run = client.post("/api/runs", json={}).json()
    response = client.post(f"{run['url']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = client.post(f"{run['url']}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == f"run {run['id']} already ended (cancelled): there is nothing to cancel"


def test_delete_removes_the_run_its_folder_and_refuses_a_running_one(client, settings):
    run = client.post("/api/runs", json={}).json()
    folder = settings.runs_dir / str(run["id"])
    folder.mkdir(parents=True)
    assert client.delete(run["url"]).status_code == 204
    assert client.get(run["url"]).status_code == 404 and not folder.exists()
    running = client.post("/api/runs", json={}).json()
    with Session(client.app.state.engine) as session:
        session.exec(update(Run).where(Run.id == running["id"]).values(status="running"))
        session.commit()
    refused = client.delete(running["url"])
    assert refused.status_code == 409
    assert running["id"] == run["id"] + 1  # a deleted run's id is not given out again
    assert refused.json()["detail"] == (
        f"run {running['id']} is running: cancel it first (POST /api/runs/{running['id']}/cancel), then delete it"
    )
    assert client.get(running["url"]).status_code == 200


def test_runs_survive_a_restart(settings):
    with TestClient(create_app(settings)) as client:
        run = client.post("/api/runs", params={"name": "kept"}, json=SEED_SNIPPET).json()
    with TestClient(create_app(settings)) as client:
        assert client.get(run["url"]).json() == run


def test_health_families_and_schema(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["slots"] == [] and health["queued"] == 0
    families = {family["name"]: family for family in client.get("/api/families").json()}
    assert families["demo"]["depth"] == 16 and families["demo"]["supported"]
    assert families["flux"] == {**families["flux"], "depth": None, "diffusers_class": "FluxTransformer2DModel", "supported": True}
    assert families["wan"]["media"] == "video" and families["ace_step"]["media"] == "audio"
    assert not families["stable_cascade"]["supported"] and "no transformer blocks" in families["stable_cascade"]["unsupported"]
    fields = {field["key"]: field for field in client.get("/api/schema").json()}
    assert fields["layersync_enabled"] == {**fields["layersync_enabled"], "type": "boolean", "default": False}
    assert fields["lr_scheduler"]["choices"] == ["constant", "constant_with_warmup", "linear", "cosine"]
    assert fields["layersync_lambda"]["nullable"] and fields["resolution"]["maximum"] == 4096
    assert "docs" in client.get("/docs").text.lower() and "/api/runs" in json.dumps(client.get("/openapi.json").json())


def test_files_are_served_from_the_run_folder_only(client, settings):
    run = client.post("/api/runs", json={}).json()
    samples = settings.runs_dir / str(run["id"]) / "samples"
    samples.mkdir(parents=True)
    (samples / "step_0000010.png").write_bytes(b"png")
    (settings.data_dir / "secret.txt").write_text("no")
    assert client.get(run["url"]).json()["sample_url"] == f"{run['url']}/files/samples/step_0000010.png"
    assert client.get(f"{run['url']}/files/samples/step_0000010.png").content == b"png"
    escape = client.get(f"{run['url']}/files/..%2F..%2Fsecret.txt")
    assert escape.status_code == 404 and "has no file" in escape.json()["detail"]


def test_a_run_with_events_is_deleted_and_its_event_ids_are_not_given_out_again(client):
    run = client.post("/api/runs", json={}).json()
    client.post(f"{run['url']}/cancel")  # its end event: a row that points at the run
    with Session(client.app.state.engine) as session:
        deleted_seq = last_seq(session, run_id=run["id"])
    assert deleted_seq and client.delete(run["url"]).status_code == 204
    assert client.get(run["url"]).status_code == 404
    other = client.post("/api/runs", json={}).json()
    client.post(f"{other['url']}/cancel")
    with Session(client.app.state.engine) as session:
        # a live stream sends only ids above the last it sent: a reused id would be skipped
        assert last_seq(session, run_id=other["id"]) > deleted_seq


def test_a_second_cancel_of_a_running_run_sends_no_second_sigterm(client, monkeypatch):
    from app import runs

    signals = []
    monkeypatch.setattr(runs, "stop_worker", lambda pid, started: signals.append(pid))
    run = client.post("/api/runs", json={}).json()
    # a live worker: the scheduler fails a run whose worker is gone, maybe before the cancel is asked
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        with Session(client.app.state.engine) as session:
            session.exec(update(Run).where(Run.id == run["id"]).values(status="running", pid=worker.pid))
            session.commit()
        first = client.post(f"{run['url']}/cancel")
        assert first.status_code == 200 and first.json()["cancel_requested"] and signals == [worker.pid]
        again = client.post(f"{run['url']}/cancel")
        assert again.status_code == 409 and signals == [worker.pid]
    finally:
        worker.kill()
        worker.wait()
    assert again.json()["detail"].startswith(f"run {run['id']}: a cancel was already requested: the worker is finishing")


@pytest.mark.parametrize("path", ["/api/runs/9223372036854775808/events", "/runs/9223372036854775808"])
def test_run_ids_beyond_sqlites_integers_are_404_not_500(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "run 9223372036854775808 does not exist" in response.text


def test_metrics_with_the_fewest_points_after_a_step_answer(client):
    from app.metrics import record_points

    run = client.post("/api/runs", json={}).json()
    with Session(client.app.state.engine) as session:
        record_points(session, run_id=run["id"], points=[(step, "loss", 1.0 / step) for step in range(1, 301)])
        session.commit()
    response = client.get(f"{run['url']}/metrics", params={"since": 5, "max_points": 2, "names": "loss"})
    assert response.status_code == 200 and min(response.json()["series"]["loss"]["steps"]) == 6


def test_resume_continues_from_the_runs_own_checkpoint_else_from_where_it_started(client, settings):
    origin = str(settings.runs_dir / "7" / "checkpoints" / "step_0000010")
    with Session(client.app.state.engine) as session:
        for run_id in (1, 2):
            session.add(Run(id=run_id, name=f"from a checkpoint {run_id}", status="failed",
                            config={"max_train_steps": 20, "resume_from_checkpoint": origin},
                            output_dir=str(settings.runs_dir / str(run_id))))
        session.commit()
    own = settings.runs_dir / "2" / "checkpoints" / "step_0000004"
    own.mkdir(parents=True)
    (own / "state.json").write_text('{"step": 4}')
    # run 1 failed before it saved a checkpoint: "latest" would find none and start from scratch
    assert client.post("/api/runs/1/resume").json()["config"]["resume_from_checkpoint"] == origin
    assert client.post("/api/runs/2/resume").json()["config"]["resume_from_checkpoint"] == "latest"
