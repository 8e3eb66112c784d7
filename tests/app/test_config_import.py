"""POST /api/configs/import: a config file (ours or SimpleTuner's) → the config the CLI's --print-config
prints for the same file, or a 422 with every problem and what the file said."""

import json

import pytest

from trainer.cli import train_main

SIMPLETUNER = {
    "--model_family": "demo",
    "--layersync_enabled": "true",
    "--layersync_student_block": "8",
    "--layersync_teacher_block": "None",  # SimpleTuner's "unset": the teacher is the student
    "--validation_prompt": "None",
    "--max_train_steps": "None",  # unset: the schema's default, not the text "None"
    "--learning_rate": "1e-4",
    "--output_dir": "output/models",
    "--report_to": "wandb",  # SimpleTuner's own: dropped with one warning
    "--tracker_project_name": "layersync",
}
OURS = {"layersync_enabled": True, "layersync_student_block": 4, "layersync_teacher_block": 12, "seed": 3,
        "output_dir": "runs/ours"}


def print_config(tmp_path, data: dict, capsys) -> tuple[dict, str]:
    """What `layersync train --config FILE --print-config` prints for ``data``: (config, stderr)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert train_main(["--config", str(path), "--print-config"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


@pytest.mark.parametrize("data", [SIMPLETUNER, OURS], ids=["simpletuner", "ours"])
def test_the_import_answers_what_the_cli_prints_for_the_same_file(client, tmp_path, capsys, data):
    response = client.post("/api/configs/import", json=data)
    assert response.status_code == 200, response.text
    answer = response.json()
    printed, stderr = print_config(tmp_path, data, capsys)
    assert answer["config"] == printed
    for warning in answer["warnings"]:
        assert f"warning: {warning}" in stderr


def test_a_simpletuner_file_loses_its_dashes_and_none_means_unset(client):
    answer = client.post("/api/configs/import", json=SIMPLETUNER).json()
    config = answer["config"]
    assert config["validation_prompt"] is None  # not the prompt "None"
    assert config["layersync_teacher_block"] == config["layersync_student_block"] == 8
    assert config["max_train_steps"] == 500
    assert config["learning_rate"] == pytest.approx(1e-4)
    assert config["layersync_lambda"] == 0.2  # the weight LayerSync takes when unset
    assert set(config) >= {"resolution", "num_frames", "audio_duration", "lora_rank", "seed"}  # every key
    assert not any(key.startswith("--") for key in config)
    (warning,) = answer["warnings"]
    assert "ignored 2 key(s) this program does not have: report_to, tracker_project_name" in warning


def test_a_file_with_problems_gets_every_one_with_its_field_and_what_it_said(client):
    data = {"--model_family": "demo", "--pretrained_model_name_or_path": "/models/elsewhere", "--layersync_enabled": "true",
            "--layersync_student_block": "8", "--layersync_lambda": "0", "--resolution": "7", "--seed": "None"}
    response = client.post("/api/configs/import", json=data)
    assert response.status_code == 422
    answer = response.json()
    problems = {tuple(problem["loc"]): problem["msg"] for problem in answer["detail"]}
    assert set(problems) == {("body", "pretrained_model_name_or_path"), ("body", "layersync_lambda"), ("body", "resolution")}
    assert "model directory '/models/elsewhere' is not allowed" in problems[("body", "pretrained_model_name_or_path")]
    assert problems[("body", "layersync_lambda")].startswith("LayerSync weight must be > 0")
    # what the file said, imported (dashes off, "None" unset), for the form to show beside the problems
    assert answer["config"] == {"model_family": "demo", "pretrained_model_name_or_path": "/models/elsewhere",
                                "layersync_enabled": "true", "layersync_student_block": "8", "layersync_lambda": "0",
                                "resolution": "7"}
    assert answer["warnings"] == []
    # the same words as a run submitted with the same config
    submitted = client.post("/api/runs", json=answer["config"])
    assert submitted.status_code == 422
    said = {tuple(problem["loc"]): problem["msg"] for problem in submitted.json()["detail"]}
    assert said[("body", "layersync_lambda")] == problems[("body", "layersync_lambda")]
    assert said[("body", "pretrained_model_name_or_path")] == problems[("body", "pretrained_model_name_or_path")]


def test_what_is_not_a_config_file_is_a_422_in_words(client):
    response = client.post("/api/configs/import", json=["--model_family", "flux"])
    assert response.status_code == 422
    assert "must be a JSON object of keys and values" in response.json()["detail"][0]["msg"]
    unparsable = client.post("/api/configs/import", content=b"{not json", headers={"Content-Type": "application/json"})
    assert unparsable.status_code == 422
    assert "not valid JSON" in unparsable.json()["detail"][0]["msg"]
