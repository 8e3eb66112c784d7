import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils.factories import SEED_SNIPPET, write_config
from tests.utils.waiting import PATIENCE_S
from trainer.cli import config_from_args, train_main
from trainer.config import ConfigError, validate_config
from trainer.events import read_events

ROOT = Path(__file__).resolve().parents[2]


def config_of(argv) -> dict:
    data, warnings, _ = config_from_args(argv)
    return validate_config(data).model_dump()


def test_flags_override_the_file(tmp_path):
    path = write_config(tmp_path / "run.json", dict(SEED_SNIPPET, max_train_steps=50))
    config = config_of(["--config", str(path), "--layersync_student_block", "4", "--max-train-steps", "7"])
    assert config["layersync_student_block"] == 4 and config["max_train_steps"] == 7
    assert config["layersync_teacher_block"] == 16


def test_upstream_flags_map_to_our_keys_and_switch_layersync_on():
    data, warnings, _ = config_from_args(["--encoder-depth", "8", "--gt-encoder-depth", "16", "--reg-weight", "0.5"])
    config = validate_config(data)
    assert (config.layersync_enabled, config.layersync_student_block, config.layersync_teacher_block) == (True, 8, 16)
    assert config.layersync_lambda == 0.5
    assert "switched on" in warnings[0]


def test_bool_flag_alone_means_true_and_pairs_have_a_short_form():
    config = config_of(["--layersync_enabled", "--layersync_pairs", "4:12,8:16", "--gradient_checkpointing"])
    assert config["layersync_enabled"] and config["gradient_checkpointing"]
    assert config["layersync_pairs"] == [(4, 12), (8, 16)]


def test_unknown_flag_suggests_the_nearest_key():
    with pytest.raises(ConfigError) as info:
        config_from_args(["--layersync_studnet_block", "8"])
    assert "did you mean --layersync_student_block?" in str(info.value)


def test_output_dir_defaults_to_a_fresh_folder_and_the_file_or_flag_wins(tmp_path):
    data, _, _ = config_from_args([])
    assert data["output_dir"].startswith("layersync-runs/")
    path = write_config(tmp_path / "run.json", {"output_dir": "from-file"})
    assert config_from_args(["--config", str(path)])[0]["output_dir"] == "from-file"
    assert config_from_args(["--config", str(path), "--output-dir", "from-flag"])[0]["output_dir"] == "from-flag"


@pytest.mark.parametrize(
    "config, key, words",
    [
        ({"layersync_enabled": True}, "layersync_student_block", "no student block is set"),
        (dict(SEED_SNIPPET, layersync_lambda=0), "layersync_lambda", "must be > 0"),
        (dict(SEED_SNIPPET, layersync_teacher_block=40), "layersync_teacher_block", "this model has 16 blocks, choose 1–16"),
        (dict(SEED_SNIPPET, layersync_enabld=True), "layersync_enabld", "did you mean layersync_enabled?"),
    ],
)
def test_every_config_error_stops_before_training_with_an_error_event(tmp_path, capsys, config, key, words):
    out = tmp_path / "run"
    path = write_config(tmp_path / "run.json", config)
    assert train_main(["--config", str(path), "--output-dir", str(out)]) == 2
    stderr = capsys.readouterr().err
    assert f"{key}: " in stderr and words in stderr
    error, end = read_events(out)
    assert error["event"] == "error" and error["kind"] == "config" and words in error["message"]
    assert [key, error["errors"][0][1]] == error["errors"][0] and end == {**end, "event": "end", "status": "failed"}
    assert not (out / "checkpoints").exists()


def test_print_config_shows_the_full_config(tmp_path, capsys):
    path = write_config(tmp_path / "run.json", SEED_SNIPPET)
    assert train_main(["--config", str(path), "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["layersync_lambda"] == 0.2 and printed["model_family"] == "demo"


def test_python_dash_m_trainer_reports_a_bad_config_in_one_line(tmp_path):
    path = write_config(tmp_path / "run.json", {"layersync_enabled": True, "layersync_student_block": 8, "layersync_lambda": -1})
    result = subprocess.run(
        [sys.executable, "-m", "trainer", "--config", str(path), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=PATIENCE_S,
    )
    assert result.returncode == 2
    assert "layersync_lambda: LayerSync weight must be > 0, got -1.0" in result.stderr


def test_an_unwritable_output_dir_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train_main(["--output-dir", str(blocker / "run"), "--max_train_steps", "1"]) == 1
    assert f"cannot write to output_dir '{blocker / 'run'}'" in capsys.readouterr().err


def test_the_summary_speaks_of_this_session_only(tmp_path, tiny_model_dir, capsys):
    from tests.utils.factories import fast_config

    path = write_config(tmp_path / "run.json", fast_config(tiny_model_dir, tmp_path / "out", max_train_steps=4, validation_steps=0))
    assert train_main(["--config", str(path), "--no-progress"]) == 0
    assert "completed at step 4; diffusion_loss" in capsys.readouterr().err
    assert train_main(["--config", str(path), "--no-progress"]) == 2  # the folder already holds that run
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("failed at step 0; output_dir:") and "diffusion_loss" not in last
