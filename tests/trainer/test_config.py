import json
import subprocess
import sys

import pytest

from tests.utils.factories import SEED_SNIPPET, make_tiny_demo_model
from trainer.config import ConfigError, resolve_block_index, validate_config
from trainer.config_files import read_config_file


def errors_of(data) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return dict(info.value.errors)


def test_reference_snippet_is_a_complete_config_on_the_demo():
    config = validate_config(dict(SEED_SNIPPET))
    assert config.model_family == "demo" and config.pretrained_model_name_or_path is None
    assert config.pairs() == [(8, 16)]
    assert config.notices() == []


def test_lambda_defaults_to_0_2_only_when_enabled_and_unset():
    assert validate_config({"layersync_enabled": True, "layersync_student_block": 8}).layersync_lambda == 0.2
    assert validate_config({}).layersync_lambda is None
    assert validate_config({}).layersync_enabled is False


@pytest.mark.parametrize("weight", [0, 0.0, -0.5])
def test_lambda_zero_or_negative_is_an_error_not_the_default(weight):
    errors = errors_of(dict(SEED_SNIPPET, layersync_lambda=weight))
    assert "must be > 0" in errors["layersync_lambda"]


def test_enabled_without_student_says_what_to_set():
    errors = errors_of({"layersync_enabled": True})
    assert "set layersync_student_block" in errors["layersync_student_block"]


def test_teacher_defaults_to_student_and_the_no_op_is_announced():
    config = validate_config({"layersync_enabled": True, "layersync_student_block": 8})
    assert config.layersync_teacher_block == 8
    (notice,) = config.notices()
    assert "no-op" in notice and "deeper" in notice


@pytest.mark.parametrize("key", ["layersync_student_block", "layersync_teacher_block"])
def test_block_deeper_than_the_model_names_depth_and_range(key):
    errors = errors_of(dict(SEED_SNIPPET, **{key: 17}))
    assert errors[key].endswith("this model has 16 blocks, choose 1–16")


def test_depth_is_read_from_a_model_directory(tmp_path):
    model_dir = make_tiny_demo_model(tmp_path / "m", num_layers=6)
    data = dict(SEED_SNIPPET, pretrained_model_name_or_path=str(model_dir), layersync_student_block=3)
    assert errors_of(data)["layersync_teacher_block"].endswith("this model has 6 blocks, choose 1–6")
    assert validate_config(dict(data, layersync_teacher_block=6)).pairs() == [(3, 6)]


def test_missing_model_directory_is_reported_on_its_key(tmp_path):
    errors = errors_of(dict(SEED_SNIPPET, pretrained_model_name_or_path=str(tmp_path / "nope")))
    assert "does not exist" in errors["pretrained_model_name_or_path"]


@pytest.mark.parametrize(
    "index, expected", [(1, 0), (8, 7), (16, 15), (0, 0)]
)
def test_one_based_friendly_resolution(index, expected):
    assert resolve_block_index(index, 16) == expected


@pytest.mark.parametrize("index", [17, -1, 100])
def test_resolution_refuses_blocks_the_model_does_not_have(index):
    with pytest.raises(ValueError, match="choose 1–16"):
        resolve_block_index(index, 16, "student")


def test_unknown_key_names_the_nearest_known_one():
    errors = errors_of({"layersync_enabld": True})
    assert errors["layersync_enabld"] == "unknown config key 'layersync_enabld': did you mean layersync_enabled?"


def test_wrong_types_get_words_a_person_understands():
    errors = errors_of({"max_train_steps": "many", "layersync_enabled": "maybe", "learning_rate": -1})
    assert errors["max_train_steps"] == "must be a whole number, got 'many'"
    assert errors["layersync_enabled"] == "must be true or false, got 'maybe'"
    assert errors["learning_rate"] == "must be greater than 0, got -1"


def test_infinite_and_nan_numbers_are_refused():
    errors = errors_of({"learning_rate": "inf", "layersync_lambda": float("nan")})
    assert errors == {"learning_rate": "must be a finite number, got 'inf'", "layersync_lambda": "must be a finite number, got nan"}


def test_a_config_must_be_an_object():
    assert "JSON object" in errors_of([1, 2])[""]


def test_simpletuner_config_is_imported_with_one_warning(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({
        "--layersync_enabled": "true",
        "--layersync_student_block": "8",
        "--layersync_teacher_block": "16",
        "--learning_rate": "1e-4",
        "--gradient_checkpointing": "true",
        "--resume_from_checkpoint": "None",
        "--data_backend_config": "config/multidatabackend.json",
        "--lycoris_config": "config/lycoris.json",
    }))
    data, warnings = read_config_file(path)
    config = validate_config(data)
    assert config.learning_rate == 1e-4 and config.gradient_checkpointing is True
    assert config.layersync_student_block == 8 and config.layersync_lambda == 0.2
    assert config.resume_from_checkpoint is None
    (warning,) = warnings
    assert "data_backend_config" in warning and "lycoris_config" in warning


def test_unreadable_and_invalid_files_say_so(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"max_train_steps": 10,}')
    with pytest.raises(ConfigError, match="not valid JSON \\(line 1"):
        read_config_file(bad)


def test_the_schema_does_not_import_torch():
    code = "import trainer.config, trainer.cli, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_caption_extension_without_its_dot_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_config({"caption_extension": "txt"})
    assert caught.value.errors == [("caption_extension", "caption_extension must start with a dot, like .txt; got 'txt'")]
