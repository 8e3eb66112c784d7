"""No path a client sends leads out of the data dir or the model folders: ``..``, absolute paths and
symlinks pointing outward are refused, for run files and for the model folder of a submitted run."""

import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.paths import inside
from tests.utils.server import app_settings

MODEL_KEY = "pretrained_model_name_or_path"
SECRET = "the server's private bytes"


def model_dir(path):
    """A folder the demo family accepts as a model (its config.json is all the server reads)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"num_layers": 16}))
    return path


def test_inside_refuses_dot_dot_absolute_and_outward_symlinks(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "sub")
    assert inside(root, "sub/x.png") == (root / "sub" / "x.png").resolve()
    assert inside(root, "in/x.png") == (root / "sub" / "x.png").resolve()  # a symlink that stays inside is fine
    for escape in ("../outside", "sub/../../outside", str(outside), "/etc/passwd", "out/x.png", "out", "a\x00b"):
        assert inside(root, escape) is None, escape


@pytest.fixture
def run_folder(client, settings):
    run = client.post("/api/runs", json={}).json()
    samples = settings.runs_dir / str(run["id"]) / "samples"
    samples.mkdir(parents=True)
    (samples / "step_0000010.png").write_bytes(b"png")
    (settings.data_dir / "secret.txt").write_text(SECRET)
    return run, samples


@pytest.mark.parametrize("path", ["..%2F..%2Fsecret.txt", "%2E%2E/%2E%2E/secret.txt", "%2Fetc%2Fpasswd",
                                  "samples%2F..%2F..%2F..%2Fsecret.txt", "leak/secret.txt", "leak", "a%00b"])
def test_run_files_never_leave_the_run_folder(client, run_folder, settings, path):
    run, samples = run_folder
    (samples.parent / "leak").symlink_to(settings.data_dir)  # a symlink pointing outward
    response = client.get(f"{run['url']}/files/{path}")
    assert response.status_code == 404 and SECRET not in response.text
    assert "has no file" in response.json()["detail"]


def test_run_files_inside_the_folder_are_served(client, run_folder):
    run, samples = run_folder
    (samples / "latest.png").symlink_to(samples / "step_0000010.png")
    assert client.get(f"{run['url']}/files/samples/step_0000010.png").content == b"png"
    assert client.get(f"{run['url']}/files/samples/latest.png").content == b"png"
    outward = client.get(f"{run['url']}/files/..%2F..%2Fsecret.txt").json()["detail"]
    assert "leads out of the run's folder" in outward


def test_without_model_roots_only_the_built_in_model_may_be_used(client, tmp_path):
    folder = model_dir(tmp_path / "models" / "tiny")
    response = client.post("/api/runs", json={MODEL_KEY: str(folder)})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", MODEL_KEY] and "LAYERSYNC_MODEL_ROOTS" in error["msg"]
    assert client.post("/api/runs", json={MODEL_KEY: ""}).status_code == 201  # empty: the built-in model


@pytest.fixture
def rooted(tmp_path):
    """The app allowing the model folders under tmp/models."""
    settings = app_settings(tmp_path / "data", model_roots=[tmp_path / "models"])
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_model_inside_the_roots_is_used_resolved(rooted, tmp_path):
    folder = model_dir(tmp_path / "models" / "tiny")
    for sent in (str(folder), "tiny"):  # a relative path counts from the root
        response = rooted.post("/api/runs", json={MODEL_KEY: sent, "layersync_enabled": True, "layersync_student_block": 4,
                                                   "layersync_teacher_block": 8})
        assert response.status_code == 201, response.text
        assert response.json()["config"][MODEL_KEY] == str(folder.resolve())  # the worker opens what was checked


def test_models_outside_the_roots_are_refused_by_the_field(rooted, tmp_path):
    outside = model_dir(tmp_path / "elsewhere")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "link").symlink_to(outside)  # inside the root by name, outside by target
    for sent in (str(outside), "../elsewhere", str(tmp_path / "models" / "link"), "link", "/etc"):
        response = rooted.post("/api/runs", json={MODEL_KEY: sent})
        assert response.status_code == 422, sent
        [error] = response.json()["detail"]
        assert error["loc"] == ["body", MODEL_KEY] and "outside the folders this server allows" in error["msg"]
        assert "LAYERSYNC_MODEL_ROOTS" in error["msg"]
    form = rooted.post("/runs/new", data={MODEL_KEY: str(outside)})
    assert form.status_code == 422 and "outside the folders this server allows" in form.text


def test_data_and_cache_folders_are_contained_too(rooted, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "models" / "images").mkdir(parents=True)
    response = rooted.post("/api/runs", json={"instance_data_dir": str(outside)})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["loc"] == ["body", "instance_data_dir"]
    assert "data folder" in error["msg"] and "LAYERSYNC_MODEL_ROOTS" in error["msg"]
    response = rooted.post("/api/runs", json={"cache_dir": "/etc/cron.d"})
    [error] = response.json()["detail"]
    assert response.status_code == 422 and error["loc"] == ["body", "cache_dir"] and "leave it empty" in error["msg"]
    # inside the roots: accepted by the path check and resolved (the schema then judges the rest)
    response = rooted.post("/api/runs", json={"instance_data_dir": "images", "cache_dir": str(tmp_path / "data" / "cache")})
    assert all(e["loc"][-1] not in ("instance_data_dir", "cache_dir") for e in response.json().get("detail", []))


def test_a_checkpoint_must_be_one_of_the_servers_runs(client, settings):
    response = client.post("/api/runs", json={"resume_from_checkpoint": "/etc"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "resume_from_checkpoint"]
    assert client.post("/api/runs", json={"resume_from_checkpoint": "latest"}).status_code == 201
