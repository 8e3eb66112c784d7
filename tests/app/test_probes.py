"""Block-map probes on a worker slot: the API, the form's partial, the slot they share with runs."""

import os
import signal
import sys

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.main import create_app
from tests.utils.factories import SEED_SNIPPET
from tests.utils.server import app_settings, wait_for
from tests.utils.waiting import wait_until
from trainer.cli import PROBE_RESULT

TINY = {"batches": 1, "batch_size": 4, "noise_levels": 2}
BLOCKING = [sys.executable, "-c", "import time; time.sleep(1200)"]  # a probe's worker that holds its slot until killed


def probe_status(client, probe_id, statuses) -> dict:
    last = {}

    def there():
        nonlocal last
        last = client.get(f"/api/probes/{probe_id}").json()
        return last if last["status"] in statuses else None

    return wait_until(there, what=lambda: f"probe {probe_id} to be {' or '.join(statuses)}: {last}")


def test_a_probe_maps_the_demo_on_a_real_worker_and_its_map_outlives_a_restart(tmp_path):
    settings = app_settings(tmp_path / "data", worker_slots=1, worker_command=[sys.executable, "-m", "trainer"])
    with TestClient(create_app(settings)) as client:
        answer = client.post("/api/probes", params=TINY, json={})
        assert answer.status_code == 202, answer.text
        probe_id = answer.json()["id"]
        assert answer.headers["Location"] == f"/api/probes/{probe_id}"
        done = probe_status(client, probe_id, ("done", "failed"))
        assert done["status"] == "done", done["error"]
        result = done["result"]
        assert result["depth"] == 16 and len(result["cosine"]) == 16 and len(result["update"]) == 16
        assert result["suggested"] == {"student": 5, "teacher": 9}
        page = client.get(f"/partials/probes/{probe_id}").text
        assert "Use 5 → 9" in page and 'data-student="5" data-teacher="9"' in page
        assert "hx-trigger" not in page  # done: no more polling
        assert "this model is untrained" in page  # a fresh demo's blocks are the identity
    assert (settings.data_dir / "probes" / probe_id / PROBE_RESULT).is_file()
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/api/probes/{probe_id}").json() == done


def test_a_probe_and_a_run_never_share_a_slot(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")  # the run trains until cancelled
    with TestClient(create_app(app_settings(tmp_path / "data", worker_slots=1))) as client:
        scheduler = client.app.state.scheduler
        scheduler.probes.command = BLOCKING
        probe_id = client.post("/api/probes", json={}).json()["id"]
        probe_status(client, probe_id, ("running",))
        run = client.post("/api/runs", json=SEED_SNIPPET).json()
        with Session(client.app.state.engine) as session:
            assert scheduler._free_devices(session) == []  # the probe's slot: the run waits
        assert client.get(run["url"]).json()["status"] == "queued"
        os.killpg(scheduler.probes.get(probe_id).pid, signal.SIGKILL)
        ended = probe_status(client, probe_id, ("failed",))
        assert "was killed by signal 9 without a result" in ended["error"]
        wait_for(client, run["id"], ("running",))
        # and the other way round: the run's slot makes the next probe wait
        second = client.post("/api/probes", json={}).json()["id"]
        with Session(client.app.state.engine) as session:
            assert scheduler._free_devices(session) == []
        assert client.get(f"/api/probes/{second}").json()["status"] == "queued"
        client.post(f"{run['url']}/cancel")
        wait_for(client, run["id"])
        probe_status(client, second, ("running",))
        os.killpg(scheduler.probes.get(second).pid, signal.SIGKILL)
        probe_status(client, second, ("failed",))


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(app_settings(tmp_path / "data", worker_slots=1))) as client:
        client.app.state.scheduler.probes.command = BLOCKING
        yield client
        for probe in list(client.app.state.scheduler.probes._jobs.values()):
            if probe.pid:
                os.killpg(probe.pid, signal.SIGKILL)


def test_a_bad_config_is_refused_in_words_before_any_worker_starts(client):
    answer = client.post("/api/probes", json={"model_family": "nope"})
    assert answer.status_code == 422
    assert "unknown model family 'nope'" in answer.json()["detail"][0]["msg"]
    form = client.post("/runs/new/probe", data={"model_family": "nope"})
    assert form.status_code == 200 and "The blocks cannot be mapped with this form yet" in form.text
    assert "unknown model family" in form.text


@pytest.mark.parametrize("name, value", [("batches", 0), ("batches", 65), ("batch_size", 257), ("noise_levels", 0),
                                         ("noise_levels", 10**30)])
def test_the_probes_sizes_are_bounded(client, name, value):
    answer = client.post("/api/probes", params={name: value}, json={})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", name]


def test_unknown_and_malformed_probe_ids(client):
    missing = client.get("/api/probes/0123456789ab")
    assert missing.status_code == 404 and "no probe 0123456789ab" in missing.json()["detail"]
    assert client.get("/api/probes/../../etc").status_code == 404  # another path altogether
    assert client.get("/api/probes/NOT-AN-ID").status_code == 422


def test_the_form_starts_a_probe_and_polls_it(client):
    page = client.post("/runs/new/probe", data={"model_family": "demo", "study": "on"})
    assert page.status_code == 200
    assert 'id="block-map"' in page.text and 'hx-get="/partials/probes/' in page.text


def test_without_worker_slots_a_probe_says_it_cannot_start(tmp_path):
    with TestClient(create_app(app_settings(tmp_path / "data"))) as client:
        answer = client.post("/api/probes", json={})
        assert answer.status_code == 409 and "no worker slots" in answer.json()["detail"]
        assert "no worker slots" in client.post("/runs/new/probe", data={}).text


def test_only_the_newest_finished_probes_keep_their_folders(client, monkeypatch):
    monkeypatch.setattr("app.probes.PROBES_KEPT", 2)
    probes_dir = client.app.state.settings.data_dir / "probes"
    for age, name in enumerate(["00000000000a", "00000000000b", "00000000000c"]):
        folder = probes_dir / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / PROBE_RESULT).write_text('{"depth": 0}')
        os.utime(folder, (1_000_000 - age, 1_000_000 - age))  # a is the newest
    live = client.post("/api/probes", json={}).json()["id"]
    assert sorted(p.name for p in probes_dir.iterdir()) == sorted(["00000000000a", "00000000000b", live])
    assert client.get("/api/probes/00000000000c").status_code == 404
    assert client.get("/api/probes/00000000000a").json()["status"] == "done"


def test_the_new_run_form_offers_to_map_the_blocks(client):
    page = client.get("/runs/new").text
    assert 'hx-post="/runs/new/probe"' in page and 'id="block-map"' in page
