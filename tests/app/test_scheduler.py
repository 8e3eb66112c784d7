import os
import sys
import time

import pytest
from fastapi.testclient import TestClient

from app import scheduler
from app.main import create_app
from app.workers import pid_alive, slot_devices
from tests.utils.factories import SEED_SNIPPET, fast_config
from tests.utils.server import app_settings, wait_for


@pytest.fixture
def one_slot(tmp_path):
    return app_settings(tmp_path / "data", worker_slots=1, gpus="3")


def test_a_queued_run_is_started_trained_and_completed_by_a_worker(one_slot):
    with TestClient(create_app(one_slot)) as client:
        first = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=30)).json()
        second = client.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=5)).json()
        wait_for(client, first["id"], ("running",))
        assert client.get(second["url"]).json()["status"] == "queued"  # one slot: the oldest goes first
        done = wait_for(client, first["id"])
        assert done["status"] == "completed" and done["step"] == 30 and done["finished_at"] and done["pid"]
        assert wait_for(client, second["id"])["status"] == "completed"
        series = client.get(f"{first['url']}/metrics", params={"names": "loss,layersync_similarity"}).json()["series"]
    assert series["loss"]["steps"] == list(range(1, 31)) and series["layersync_similarity"]["values"][-1] == 0.53
    folder = one_slot.runs_dir / str(first["id"])
    assert (folder / "config.json").is_file()
    assert "CUDA_VISIBLE_DEVICES=3" in (folder / "worker.log").read_text()  # the slot's GPU


def test_a_worker_that_dies_without_an_end_fails_the_run_with_its_last_output(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "crash")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        failed = wait_for(client, run["id"])
        end = client.get(f"{run['url']}/events").text
    assert failed["status"] == "failed" and failed["last_metrics"] == {"loss": 1.0, "diffusion_loss": 1.0}
    assert failed["error"].startswith("the worker exited with code 1 without ending the run; its last output:")
    assert "boom: the fake worker crashed on purpose" in failed["error"]
    assert "event: end" in end and "boom" in end


def wait_for_steps(client, run) -> dict:
    """The run once its worker has reported a step (it is in its loop, its pid recorded)."""
    deadline = time.monotonic() + 20
    while not (state := client.get(run["url"]).json())["step"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    return state


def test_cancel_stops_a_running_worker_which_ends_the_run_cancelled(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)["pid"]
        answer = client.post(f"{run['url']}/cancel").json()
        assert answer["cancel_requested"] and answer["status"] == "running"
        assert wait_for(client, run["id"])["status"] == "cancelled"
    assert not pid_alive(pid)


def test_a_worker_that_ignores_the_cancel_is_killed_after_the_grace_period(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "stubborn")
    monkeypatch.setattr(scheduler, "CANCEL_GRACE_SECONDS", 1.0)
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)["pid"]
        client.post(f"{run['url']}/cancel")
        time.sleep(0.6)
        assert client.get(run["url"]).json()["status"] == "running"  # SIGTERM ignored, still within the grace
        done = wait_for(client, run["id"], timeout=5)
    assert done["status"] == "cancelled" and "killed (SIGKILL)" in done["error"], done
    assert not pid_alive(pid)


def test_a_restarted_server_takes_its_running_worker_back(one_slot, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_MODE", "wait")
    with TestClient(create_app(one_slot)) as client:
        run = client.post("/api/runs", json={}).json()
        pid = wait_for_steps(client, run)["pid"]
    assert pid_alive(pid)  # the worker outlives the server
    time.sleep(0.3)  # it writes metrics meanwhile
    with TestClient(create_app(one_slot)) as client:
        step = client.get(run["url"]).json()["step"]
        time.sleep(0.5)
        assert client.get(run["url"]).json()["step"] > step  # followed again
        client.post(f"{run['url']}/cancel")
        assert wait_for(client, run["id"])["status"] == "cancelled"
        steps = client.get(f"{run['url']}/metrics", params={"names": "loss", "max_points": 100_000}).json()["series"]["loss"]["steps"]
    assert steps == list(range(1, len(steps) + 1))  # nothing lost, nothing twice across the restart


def test_slots_follow_the_gpus_or_one_cpu():
    assert slot_devices(None, "0,1") == ["0", "1"]
    assert slot_devices(1, "0,1") == ["0"]
    assert slot_devices(3, "0,1") == ["0", "1", "0"]
    assert slot_devices(0, "0") == []


def test_slots_without_gpus_are_one_cpu_slot(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert slot_devices(None, None) == ["cpu"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert slot_devices(None, None) == ["2", "5"]


@pytest.mark.slow
def test_the_real_trainer_runs_a_layersync_run_end_to_end(tmp_path, tiny_model_dir):
    settings = app_settings(tmp_path / "data", worker_slots=1, worker_command=[sys.executable, "-m", "trainer"],
                            model_roots=[tiny_model_dir])  # the web app may use no other model folder
    config = fast_config(tiny_model_dir, "ignored", max_train_steps=2, logging_steps=1, validation_steps=2,
                         checkpointing_steps=0)
    with TestClient(create_app(settings)) as client:
        run = client.post("/api/runs", params={"name": "real"}, json=config).json()
        done = wait_for(client, run["id"], timeout=60)
        assert done["status"] == "completed", done["error"]
        series = client.get(f"{run['url']}/metrics").json()["series"]
        sample = client.get(done["sample_url"])
    assert series["layersync_loss"]["steps"] == [1, 2] and series["val_diffusion_loss"]["steps"] == [2]
    assert all(-0.2 - 1e-6 <= value < 0 for value in series["layersync_loss"]["values"])  # −λ·similarity
    assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    assert done["output_dir"] == str(settings.runs_dir / str(run["id"])) and os.path.isdir(done["output_dir"])
