"""A diffusers family through the product, not just the trainer: the real server (a process on
127.0.0.1) takes a Flux run from the REST API, its worker encodes an image folder and trains with
LayerSync, and the run page shows the sample; the CLI trains the same. Pairs that cannot be compared
(SDXL levels) and families that cannot be trained are refused by the field before anything starts."""

import json
import subprocess
import sys

import pytest

from tests.trainer.families.tiny_unet import tiny_unet
from tests.utils.server_process import ROOT, ServerProcess
from tests.utils.tiny_pipelines import flux_pipeline, image_folder
from tests.utils.waiting import PATIENCE_S

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The folders the server allows: a tiny Flux pipeline, an image folder, a bare SDXL UNet."""
    root = tmp_path_factory.mktemp("models")
    flux_pipeline(root / "flux")
    image_folder(root / "images", n=4)
    tiny_unet().save_pretrained(root / "sdxl-unet")
    return root


def flux_run(**overrides) -> dict:
    return {"model_family": "flux", "pretrained_model_name_or_path": "flux", "instance_data_dir": "images",
            "resolution": 16, "max_train_steps": 4, "train_batch_size": 2, "logging_steps": 1, "validation_steps": 4,
            "validation_num_inference_steps": 2, "checkpointing_steps": 0, "layersync_enabled": True,
            "layersync_student_block": 2, "layersync_teacher_block": 4, **overrides}


def test_the_server_trains_a_flux_run_from_an_image_folder(models, tmp_path):
    server = ServerProcess(tmp_path / "data", model_roots=[models])
    server.start()
    try:
        created = server.http.post("/api/runs", json=flux_run(cache_dir=str(tmp_path / "data" / "cache")))
        assert created.status_code == 201, created.text
        run = created.json()
        assert run["config"]["pretrained_model_name_or_path"] == str((models / "flux").resolve())
        done = server.wait_ended(run["id"])
        assert done["status"] == "completed", (done, server.http.get(f"/api/runs/{run['id']}/log").text)
        series = server.http.get(f"/api/runs/{run['id']}/metrics",
                                 params={"names": "layersync_loss,layersync_similarity"}).json()["series"]
        assert series["layersync_loss"]["steps"] == [1, 2, 3, 4]
        assert all(-1 <= value <= 1 for value in series["layersync_similarity"]["values"])
        log = server.http.get(f"/api/runs/{run['id']}/log").text
        assert "encoding 4 image file(s)" in log and "LayerSync on" in log
        page = server.http.get(f"/runs/{run['id']}").text
        assert "samples/step_0000004.png" in page and "one image per prompt" in page
        sample = server.http.get(f"/api/runs/{run['id']}/files/samples/step_0000004.png")
        assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    finally:
        server.close()


def test_pairs_and_families_that_cannot_train_are_refused_by_their_field(models, tmp_path):
    server = ServerProcess(tmp_path / "data", model_roots=[models])
    server.start()
    try:
        sdxl = {"model_family": "sdxl", "pretrained_model_name_or_path": "sdxl-unet", "instance_data_dir": "images",
                "resolution": 64, "layersync_enabled": True, "layersync_student_block": 1, "layersync_teacher_block": 5}
        response = server.http.post("/api/runs", json=sdxl)
        [error] = response.json()["detail"]
        assert response.status_code == 422 and error["loc"][-1] == "layersync_teacher_block"
        assert "student block 1 (down block 0)" in error["msg"] and "choose a teacher among blocks" in error["msg"]
        response = server.http.post("/api/runs", json={"model_family": "stable_cascade"})
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "model_family" and "Families that work: demo, flux" in error["msg"]
        form = server.http.get("/runs/new").text
        assert '<option value="wan"' in form and '<option value="stable_cascade"' not in form
        assert server.http.get("/api/runs").json()["total"] == 0  # nothing refused was queued
    finally:
        server.close()


def test_the_cli_trains_a_flux_run(models, tmp_path):
    config = tmp_path / "flux.json"
    config.write_text(json.dumps(flux_run(pretrained_model_name_or_path=str(models / "flux"),
                                          instance_data_dir=str(models / "images"), cache_dir=str(tmp_path / "cache"),
                                          validation_steps=0)))
    done = subprocess.run([sys.executable, "-m", "app.cli", "train", "--config", str(config), "--output-dir",
                           str(tmp_path / "run"), "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "metric" and "layersync_loss" in e] == [1, 2, 3, 4]
    assert events[-1] == {**events[-1], "event": "end", "status": "completed"}
