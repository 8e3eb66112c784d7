"""Deleting a study: DELETE /api/studies/{id} and the study page's button; refused while a run of it runs."""

from pathlib import Path

from sqlmodel import Session, select, update

from app.metrics import record_points
from app.models import Metric, Run, Study, StudyRun
from tests.utils.factories import SEED_SNIPPET


def make_study(client, seeds=(0, 1)) -> dict:
    response = client.post("/api/studies", json={"config": SEED_SNIPPET, "seeds": list(seeds)})
    assert response.status_code == 201, response.text
    return response.json()


def set_status(client, run_id: int, status: str) -> None:
    with Session(client.app.state.engine) as session:
        session.exec(update(Run).where(Run.id == run_id).values(status=status))
        session.commit()


def run_dirs(client, study) -> list[Path]:
    with Session(client.app.state.engine) as session:
        return [Path(session.get(Run, run["id"]).output_dir) for run in study["runs"]]


def test_delete_removes_the_study_its_runs_their_points_and_folders(client):
    study, other = make_study(client), make_study(client, seeds=(5,))
    ids = [run["id"] for run in study["runs"]]
    set_status(client, ids[0], "completed")
    set_status(client, ids[1], "failed")
    folders = run_dirs(client, study)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "events.jsonl").write_text("")
    with Session(client.app.state.engine) as session:
        record_points(session, run_id=ids[0], points=[(10, "loss", 0.5)])
        session.commit()
    response = client.delete(f"/api/studies/{study['id']}")
    assert response.status_code == 204, response.text
    assert client.get(study["url"]).status_code == 404
    assert all(client.get(f"/api/runs/{run_id}").status_code == 404 for run_id in ids)
    assert not any(folder.exists() for folder in folders)
    with Session(client.app.state.engine) as session:
        assert session.exec(select(Metric).where(Metric.run_id.in_(ids))).first() is None
        assert session.exec(select(StudyRun).where(StudyRun.study_id == study["id"])).first() is None
        assert session.get(Study, study["id"]) is None
    # the other study is untouched
    assert [run["id"] for run in client.get(other["url"]).json()["runs"]] == [run["id"] for run in other["runs"]]
    assert [s["id"] for s in client.get("/api/studies").json()] == [other["id"]]


def test_delete_is_refused_while_a_run_of_the_study_is_running_and_nothing_goes(client):
    study = make_study(client)
    running = study["runs"][2]["id"]
    set_status(client, running, "running")
    response = client.delete(f"/api/studies/{study['id']}")
    assert response.status_code == 409
    message = response.json()["detail"]
    assert f"while its run {running} is running" in message and f"POST /api/runs/{running}/cancel" in message
    assert [run["id"] for run in client.get(study["url"]).json()["runs"]] == [run["id"] for run in study["runs"]]
    set_status(client, running, "cancelled")
    assert client.delete(f"/api/studies/{study['id']}").status_code == 204


def test_an_unknown_study_is_404_in_words(client):
    response = client.delete("/api/studies/999")
    assert response.status_code == 404 and "study 999 does not exist" in response.json()["detail"]


def test_the_study_page_button_deletes_and_goes_back_to_the_list_or_says_why_not(client):
    study = make_study(client)
    page = client.get(f"/studies/{study['id']}")
    assert f'action="/studies/{study["id"]}/delete"' in page.text and "Delete this study and its runs" in page.text
    set_status(client, study["runs"][0]["id"], "running")
    refused = client.post(f"/studies/{study['id']}/delete")
    assert refused.status_code == 409 and "cannot be deleted while its run" in refused.text
    set_status(client, study["runs"][0]["id"], "completed")
    done = client.post(f"/studies/{study['id']}/delete", follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/studies"
    assert client.get(f"/studies/{study['id']}").status_code == 404
