"""Studies over the API and the pages: shapes, status codes, every problem naming its arm, the report."""

import pytest
from sqlmodel import Session, select, update

from app.metrics import record_points
from app.models import SQL_INT_MAX, Run
from app.studies import study_status
from tests.utils.factories import SEED_SNIPPET


def problems(response) -> list[tuple[list, str]]:
    assert response.status_code == 422, response.text
    return [(error["loc"], error["msg"]) for error in response.json()["detail"]]


def finish(client, run_ids_values: dict[int, float], status: str = "completed", metric: str = "val_diffusion_loss") -> None:
    """Mark runs ended with one point of ``metric`` at step 100, as the follower would store them."""
    with Session(client.app.state.engine) as session:
        for run_id, value in run_ids_values.items():
            session.exec(update(Run).where(Run.id == run_id).values(status=status))
            record_points(session, run_id=run_id, points=[(100, metric, value)])
        session.commit()


def test_a_study_queues_one_run_per_arm_and_seed_paired_by_seed(client):
    response = client.post("/api/studies", json={"name": "does it help", "config": SEED_SNIPPET, "seeds": [0, 1, 2]})
    assert response.status_code == 201, response.text
    study = response.json()
    assert response.headers["location"] == study["url"] == f"/api/studies/{study['id']}"
    assert [(run["arm"], run["seed"], run["status"]) for run in study["runs"]] == [
        (arm, seed, "queued") for seed in (0, 1, 2) for arm in ("layersync", "baseline")]
    assert study["arms"] == {"layersync": {}, "baseline": {"layersync_enabled": False}}
    assert study["status"] == "queued" and study["report"] is None
    for place in study["runs"]:
        run = client.get(f"/api/runs/{place['id']}").json()
        assert run["config"]["seed"] == place["seed"] and run["name"] == f"does it help · {place['arm']} · seed {place['seed']}"
        assert run["config"]["layersync_enabled"] is (place["arm"] == "layersync")
        assert run["config"]["layersync_student_block"] == 8  # the arm is the base config with its overrides
    again = client.get(study["url"]).json()
    assert {key: again[key] for key in ("id", "runs", "url")} == {key: study[key] for key in ("id", "runs", "url")}
    assert client.get("/api/studies").json()[0] | {"created_at": None} == {
        "id": study["id"], "name": "does it help", "url": study["url"], "page": f"/studies/{study['id']}", "created_at": None,
        "seeds": [0, 1, 2], "arms": ["layersync", "baseline"], "status": "queued", "runs": 6, "finished": 0}


def test_every_problem_comes_at_once_each_naming_its_arm_and_nothing_is_queued(client):
    arms = {"weak": {"layersync_lambda": 0}, "deep": {"layersync_teacher_block": 17}, "baseline": {"layersync_enabled": False}}
    body = {"config": dict(SEED_SNIPPET, max_train_steps="many"), "seeds": [0, 1], "arms": arms}
    found = problems(client.post("/api/studies", json=body))
    assert (["body", "config", "max_train_steps"], "arms weak, deep and baseline: must be a whole number, got 'many'") in found
    assert (["body", "arms", "weak", "layersync_lambda"],
            "arm weak: LayerSync weight must be > 0, got 0.0: keep the default 0.2 if unsure, or turn LayerSync off") in found
    assert (["body", "arms", "deep", "layersync_teacher_block"],
            "arm deep: teacher block 17 does not exist: this model has 16 blocks, choose 1–16") in found
    assert len(found) == 3
    found = problems(client.post("/api/studies", json={"config": SEED_SNIPPET, "seeds": [0, 0, -1],
                                                       "arms": {"a b": {}, "baseline": {"seed": 3}}}))
    assert [loc for loc, _ in found] == [["body", "seeds", 2], ["body", "seeds"], ["body", "arms", "a b"],
                                         ["body", "arms", "baseline", "seed"]]
    assert "arm baseline: the study sets each run's seed" in found[3][1] and "seed 0 is given twice" in found[1][1]
    assert client.get("/api/runs").json()["total"] == 0 and client.get("/api/studies").json() == []


@pytest.mark.parametrize("body, words", [
    ({"config": {}}, "arm baseline: trains the same config as arm layersync (LayerSync is off in both"),
    ({"config": SEED_SNIPPET, "arms": {"only": {}}}, "arms must map two or more arm names"),
    ({"config": SEED_SNIPPET, "arms": {"a": {}, "b": {"layersync_lambda": 0.1}}}, 'name one arm "baseline"'),
    ({"config": SEED_SNIPPET, "seeds": []}, "seeds must be a list of whole numbers"),
])
def test_a_study_that_cannot_compare_anything_is_refused_in_words(client, body, words):
    assert any(words in message for _, message in problems(client.post("/api/studies", json=body)))


def test_the_report_appears_once_a_seed_has_all_its_arms_completed(client):
    study = client.post("/api/studies", json={"config": SEED_SNIPPET, "seeds": [0, 1, 2]}).json()
    ids = {(run["arm"], run["seed"]): run["id"] for run in study["runs"]}
    finish(client, {ids["layersync", 0]: 0.30})
    assert client.get(study["url"]).json()["report"] is None  # its baseline has not finished
    finish(client, {ids["baseline", 0]: 0.32, ids["layersync", 1]: 0.31, ids["baseline", 1]: 0.34})
    finish(client, {ids["layersync", 2]: 0.5}, status="failed")
    finish(client, {ids["layersync", 2]: 1e-4}, status="failed", metric="lr")  # no measure to report on
    answer = client.get(study["url"]).json()
    assert answer["status"] == "running" and answer["metrics"] == ["val_diffusion_loss"]
    report = answer["report"]
    assert report["step"] == 100 and report["arms"]["layersync"]["values"] == {"0": 0.30, "1": 0.31}
    assert report["difference"]["arm"] == "layersync" and report["difference"]["vs"] == "baseline"
    # -0.02 and -0.03 on two seeds: t(0.975, 1) = 12.71 makes the interval ±0.064, across 0
    assert report["difference"]["mean"] == pytest.approx(-0.025) and report["verdict"] == "no measurable difference"
    assert report["left_out"] == [{"seed": 2, "reason": "its layersync run failed"}]
    assert "Seed 2 is left out" in report["sentence"]
    found = problems(client.get(study["url"], params={"metric": "nonsense"}))
    assert found == [(["query", "metric"], f"metric 'nonsense' is not logged by the runs of study {study['id']}: "
                                           "choose one of val_diffusion_loss")]
    page = client.get(f"/studies/{study['id']}")
    assert page.status_code == 200 and report["verdict"] in page.text and "<polyline" in page.text and "seed 1" in page.text


@pytest.mark.parametrize("study_id", [0, -1, 99, SQL_INT_MAX, SQL_INT_MAX + 1, 10**30])
def test_an_unknown_study_is_404_in_words_for_any_whole_number(client, study_id):
    response = client.get(f"/api/studies/{study_id}")
    assert response.status_code == 404 and response.json()["detail"] == (
        f"study {study_id} does not exist: list the studies with GET /api/studies")
    assert client.get(f"/studies/{study_id}").status_code == 404


def test_the_studies_page_lists_them_and_the_nav_links_there(client):
    client.post("/api/studies", json={"name": "<b>mine</b>", "config": SEED_SNIPPET, "seeds": [0, 1]})
    page = client.get("/studies")
    assert page.status_code == 200 and "&lt;b&gt;mine&lt;/b&gt;" in page.text and "0 of 4" in page.text
    assert 'href="/studies"' in client.get("/").text


def test_the_form_runs_a_study_with_seeds_counted_from_its_seed(client):
    form = {"study": "on", "study_seeds": "3", "seed": "5", "layersync_enabled": "on", "layersync_student_block": "8",
            "layersync_teacher_block": "16"}
    response = client.post("/runs/new", data=form, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/studies/1"
    study = client.get("/api/studies/1").json()
    assert [(run["arm"], run["seed"]) for run in study["runs"]] == [
        (arm, seed) for seed in (5, 6, 7) for arm in ("layersync", "baseline")]
    refused = client.post("/runs/new", data=dict(form, study_seeds="1"), follow_redirects=False)
    assert refused.status_code == 422 and "the number of seeds must be a whole number from 2 to 32" in refused.text
    assert 'name="study" checked' in refused.text  # the choice is kept
    checks = client.post("/runs/new/validate", data=form)  # the study's fields are no config keys
    assert checks.status_code == 200 and "unknown config key" not in checks.text


def test_a_run_of_a_study_can_be_deleted(client):
    study = client.post("/api/studies", json={"config": SEED_SNIPPET, "seeds": [0, 1]}).json()
    first = study["runs"][0]["id"]
    assert client.delete(f"/api/runs/{first}").status_code == 204
    assert [run["id"] for run in client.get(study["url"]).json()["runs"]] == [run["id"] for run in study["runs"][1:]]
    with Session(client.app.state.engine) as session:
        assert session.exec(select(Run.id).where(Run.id == first)).first() is None


@pytest.mark.parametrize("statuses, status", [
    (["queued", "queued"], "queued"), (["running", "queued"], "running"), (["completed", "queued"], "running"),
    (["completed", "completed"], "completed"), (["completed", "failed"], "incomplete"), (["cancelled", "failed"], "incomplete"),
])
def test_a_studys_status_comes_from_its_runs(statuses, status):
    assert study_status(statuses) == status
