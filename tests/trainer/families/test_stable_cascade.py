"""Stable Cascade is a convolutional UNet: no transformer blocks, so every way in refuses it at validation."""

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.utils.server import app_settings
from tests.utils.waiting import PATIENCE_S
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, supported_families

ROOT = Path(__file__).resolve().parents[3]
WHY = "StableCascadeUNet is a convolutional UNet with no transformer blocks to align"


def test_the_registry_marks_it_unsupported_and_leaves_it_out_of_the_working_families():
    assert FAMILIES["stable_cascade"].unsupported
    assert "stable_cascade" not in supported_families() and {"demo", "auraflow", "ace_step"} <= set(supported_families())


def test_validation_refuses_it_on_model_family_and_lists_the_families_that_work(tmp_path):
    with pytest.raises(ConfigError) as info:
        validate_config({"model_family": "stable_cascade", "pretrained_model_name_or_path": str(tmp_path),
                         "instance_data_dir": str(tmp_path), "layersync_enabled": True, "layersync_student_block": 8})
    ((key, message),) = info.value.errors
    assert key == "model_family"
    assert message.startswith("Stable Cascade cannot be trained with LayerSync: ") and WHY in message
    assert message.endswith(f"Families that work: {', '.join(supported_families())}")


def test_the_api_answers_422_on_model_family_and_creates_no_run(tmp_path):
    with TestClient(create_app(app_settings(tmp_path / "data"))) as client:
        response = client.post("/api/runs", json={"model_family": "stable_cascade"})
        assert response.status_code == 422, response.text
        errors = {str(error["loc"][-1]): error["msg"] for error in response.json()["detail"]}
        assert WHY in errors["model_family"] and "Families that work: demo, " in errors["model_family"]
        assert client.get("/api/runs").json()["total"] == 0


def test_the_cli_exits_2_with_the_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--model_family", "stable_cascade", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=PATIENCE_S, check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "model_family: Stable Cascade cannot be trained with LayerSync" in result.stderr
    assert WHY in result.stderr and "Families that work: demo, " in result.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
