"""The config's checks in stages (every problem at once), its bounds, its one importer and its notices."""

import json

import pytest

from tests.utils.factories import SEED_SNIPPET, write_config
from trainer.cli import train_main
from trainer.config import (
    MAX_KEYS,
    ConfigError,
    TrainConfig,
    config_notices,
    config_to_json,
    validate_config,
)
from trainer.config_files import import_config, read_config_file


def errors_of(data) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return info.value.errors


# ---- every problem at once ----------------------------------------------------------------------------------


def test_a_typo_a_zero_weight_and_a_missing_block_are_three_messages():
    errors = errors_of(dict(SEED_SNIPPET, layersync_enabld=True, layersync_lambda=0, layersync_student_block=40))
    assert [key for key, _ in errors] == ["layersync_enabld", "layersync_lambda", "layersync_student_block"]
    assert errors[2][1] == "student block 40 does not exist: this model has 16 blocks, choose 1–16"


def test_a_type_error_does_not_hide_the_rules_and_the_disk(tmp_path):
    errors = dict(errors_of(dict(SEED_SNIPPET, max_train_steps="many", layersync_lambda=-1, layersync_teacher_block=17,
                                 instance_data_dir=str(tmp_path / "nowhere"))))
    assert errors.keys() == {"max_train_steps", "layersync_lambda", "layersync_teacher_block", "instance_data_dir"}


def test_a_key_that_failed_its_own_check_is_told_once():
    errors = errors_of({"layersync_enabled": True, "layersync_student_block": "eight"})
    assert errors == [("layersync_student_block", "must be a whole number, got 'eight'")]


def test_the_schema_is_pure_and_the_disk_is_the_environment_checks(tmp_path):
    data = dict(SEED_SNIPPET, instance_data_dir=str(tmp_path / "nowhere"), pretrained_model_name_or_path=str(tmp_path / "none"))
    config = TrainConfig.model_validate(data)  # no disk read: types, ranges and the rules between keys only
    assert config.instance_data_dir == str(tmp_path / "nowhere")
    assert {key for key, _ in errors_of(data)} == {"instance_data_dir", "pretrained_model_name_or_path"}


# ---- each family's own defaults --------------------------------------------------------------------------------


def test_unset_keys_take_the_familys_defaults_and_set_ones_stay(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"num_layers": 2}))
    sana = validate_config({"model_family": "sana", "pretrained_model_name_or_path": str(tmp_path),
                            "instance_data_dir": str(tmp_path)})
    assert (sana.resolution, sana.num_frames, sana.audio_duration, sana.learning_rate) == (1024, None, None, 1e-4)
    demo = validate_config({})
    assert (demo.resolution, demo.num_frames, demo.learning_rate) == (16, None, 1e-3)
    assert validate_config({"resolution": 32, "learning_rate": 0.01}).resolution == 32


# ---- bounds ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["max_train_steps", "lr_warmup_steps", "logging_steps", "validation_steps",
                                 "checkpointing_steps", "train_batch_size", "seed", "checkpoints_total_limit",
                                 "layersync_student_block", "layersync_teacher_block"])
def test_every_integer_key_has_a_sane_maximum(key):
    (error,) = errors_of({key: 10**29})
    assert error[0] == key and error[1].startswith("must be at most ")


def test_steps_beyond_a_real_run_are_refused_and_a_big_real_one_is_kept():
    assert errors_of({"max_train_steps": 10**8 + 1}) == [("max_train_steps", "must be at most 100000000, got 100000001")]
    assert validate_config({"max_train_steps": 10**8}).max_train_steps == 10**8


@pytest.mark.parametrize("key", ["max_train_steps", "resolution", "learning_rate", "layersync_lambda", "seed"])
def test_true_and_false_are_not_numbers(key):
    assert errors_of({key: True}) == [(key, "must be a number, not true or false; got true")]


def test_true_in_a_pair_is_not_a_block():
    assert errors_of({"layersync_pairs": [[True, 3]]})[0][0] == "layersync_pairs"


def test_numbers_written_as_text_still_convert():
    config = validate_config({"max_train_steps": "8", "learning_rate": "1e-4", "layersync_enabled": "true",
                              "layersync_student_block": "8", "layersync_teacher_block": "12"})
    assert (config.max_train_steps, config.learning_rate, config.layersync_enabled) == (8, 1e-4, True)


@pytest.mark.parametrize("key, limit", [("validation_prompt", 4000), ("instance_data_dir", 4096),
                                        ("pretrained_model_name_or_path", 4096), ("cache_dir", 4096)])
def test_text_has_a_length_limit(key, limit):
    (error,) = errors_of({key: "x" * (limit + 1)})
    assert error == (key, f"is too long: keep it to {limit:,} characters (got {limit + 1:,})")


def test_a_huge_prompt_is_refused_without_echoing_it():
    (error,) = errors_of({"validation_prompt": "x" * 50_000_000})
    assert len(error[1]) < 100


def test_a_long_unknown_key_is_cut_short_where_it_is_told():
    ((key, message),) = errors_of({"k" * 100_000: 1})
    assert len(key) == 101 and len(message) < 200


def test_too_many_keys_is_one_message():
    (error,) = errors_of({f"key{i}": 1 for i in range(200_000)})
    assert error[1].startswith("a config has 200,000 keys, more than the 1,000")


def test_only_the_first_unknown_keys_get_a_hint_and_the_rest_one_message():
    errors = errors_of({f"layersync_enabld{i}": 1 for i in range(MAX_KEYS)})
    assert len(errors) == 11 and "did you mean" in errors[0][1]
    assert errors[-1][1].startswith("990 more unknown config keys ('layersync_enabld10', ")


def test_a_lone_surrogate_is_a_message_that_can_be_written():
    (error,) = errors_of({"validation_prompt": "\ud800"})
    assert error == ("validation_prompt", "contains a character that is not text (a lone surrogate such as \\ud800): remove it")
    (key, message), = errors_of({"\ud800": 1})
    (key + message).encode("utf-8")  # the key is told as its escape, so a UTF-8 answer can carry it
    assert key == "\\ud800"


# ---- one importer ------------------------------------------------------------------------------------------


def test_unset_values_mean_the_default_in_our_files_and_simpletuners():
    ours, warnings = import_config({"validation_prompt": "None", "lora_alpha": "", "max_train_steps": None, "seed": 3})
    assert (ours, warnings) == ({"seed": 3}, [])
    theirs, (warning,) = import_config({"--validation_prompt": "None", "--seed": "3", "--lycoris_config": "x.json"})
    assert theirs == {"seed": "3"} and "lycoris_config" in warning


def test_our_unknown_keys_are_kept_for_the_checks_to_name():
    data, warnings = import_config({"layersync_enabld": True})
    assert data == {"layersync_enabld": True} and warnings == []


def test_a_simpletuner_warning_lists_a_bounded_number_of_keys():
    _, (warning,) = import_config({f"--option_{i:03}": 1 for i in range(300)})
    assert "ignored 300 key(s)" in warning and warning.endswith("and 250 more")


def test_print_config_is_the_imported_validated_file(tmp_path, capsys):
    path = write_config(tmp_path / "config.json", {"--validation_prompt": "None", "--max_train_steps": "7",
                                                    "--lycoris_config": "lycoris.json"})
    assert train_main(["--config", str(path), "--print-config", "--output-dir", "out"]) == 0
    printed = json.loads(capsys.readouterr().out)
    data, _ = read_config_file(path)
    assert printed == config_to_json(validate_config(dict(data, output_dir="out")))
    assert printed["validation_prompt"] is None and printed["max_train_steps"] == 7


def test_print_config_of_our_own_file_applies_the_same_unset_rule(tmp_path, capsys):
    path = write_config(tmp_path / "config.json", {"validation_prompt": "None"})
    assert train_main(["--config", str(path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["validation_prompt"] is None


# ---- notices -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data, field, words", [
    ({"layersync_enabled": "on", "layersync_student_block": "8"}, "layersync_teacher_block", "no-op"),
    ({"layersync_enabled": True, "layersync_student_block": 0, "layersync_teacher_block": 1}, "layersync_teacher_block", "no-op"),
    ({"layersync_enabled": True, "layersync_student_block": 12, "layersync_teacher_block": 4}, "layersync_teacher_block",
     "shallower"),
    ({"layersync_student_block": "8"}, "layersync_student_block", "LayerSync is off"),
    ({"instance_data_dir": "/data"}, "instance_data_dir", "built-in data"),
])
def test_notices_work_on_a_partial_config_with_their_field(data, field, words):
    (notice,) = config_notices(data)
    assert notice[0] == field and words in notice[1]


def test_no_notice_for_a_good_pair_or_a_block_the_model_lacks():
    assert config_notices(dict(SEED_SNIPPET)) == []
    assert config_notices({"layersync_enabled": True, "layersync_student_block": 40}) == []  # the checks tell it
