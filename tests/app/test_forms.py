"""The new-run form ↔ the flat config: what the form shows, and what a posted form becomes."""

import pytest

from app.forms import (
    FAMILY_KEYS,
    FORM_FIELDS,
    NOT_IN_FORM,
    SECTIONS,
    check_form,
    config_to_values,
    default_values,
    family_fields,
    family_table,
    form_to_config,
    form_values,
)
from tests.utils.factories import SEED_SNIPPET
from trainer.config import FIELDS, ConfigError, validate_config


def posted(values: dict[str, str]) -> dict[str, str]:
    """What a browser posts for these form values: an unticked checkbox is not sent at all."""
    return {key: value for key, value in values.items() if not (FORM_FIELDS[key].kind == "checkbox" and value != "true")}


def test_every_schema_key_is_in_the_form_or_left_out_on_purpose():
    assert set(FORM_FIELDS) | set(NOT_IN_FORM) == set(FIELDS)
    assert not set(FORM_FIELDS) & set(NOT_IN_FORM)


def test_loss_functions_holds_exactly_the_reference_controls():
    section = next(s for s in SECTIONS if s.id == "loss-functions")
    assert section.parent == "training"
    assert [(f.key, f.label) for f in section.fields] == [
        ("layersync_enabled", "Enable LayerSync"),
        ("layersync_student_block", "Student Block"),
        ("layersync_teacher_block", "Teacher Block"),
        ("layersync_lambda", "Weight"),
        ("layersync_lambda_schedule", "Weight schedule"),  # ours beyond the reference page: the weight over the run
        ("layersync_lambda_end", "Final weight"),
        ("layersync_lambda_warmup_steps", "Weight warm-up steps"),
        ("layersync_stop_step", "Stop LayerSync at step"),
        ("layersync_on_collapse", "On collapse"),
    ]
    helps = {f.key: f.help for f in section.fields}
    assert "24-layer models start with 8" in helps["layersync_student_block"]
    assert "16 blocks" in helps["layersync_student_block"]  # the demo model's depth, from the registry
    assert "a few blocks deeper" in helps["layersync_teacher_block"]


def test_the_form_opens_with_the_schema_defaults_and_weight_0_2():
    values = default_values()
    assert values["layersync_lambda"] == "0.2"
    assert values["layersync_enabled"] == "false"
    assert values["max_train_steps"] == str(FIELDS["max_train_steps"].default)
    assert values["learning_rate"] == ""  # empty: the family's default
    name, config = form_to_config(posted(values))
    assert name is None
    assert validate_config(config).layersync_enabled is False


def test_the_reference_snippet_survives_the_form():
    name, config = form_to_config(posted(config_to_values(SEED_SNIPPET)) | {"name": " paired run "})
    assert name == "paired run"
    assert {key: config[key] for key in SEED_SNIPPET} == SEED_SNIPPET
    validated = validate_config(config)
    assert validated.pairs() == [(8, 16)]


def test_checkboxes_become_booleans_and_empty_text_is_left_out():
    _, config = form_to_config({"layersync_enabled": "true", "use_ema": "on", "layersync_student_block": "8",
                                "layersync_teacher_block": "", "learning_rate": "  ", "pretrained_model_name_or_path": ""})
    assert config["layersync_enabled"] is True
    assert config["use_ema"] is True
    assert config["gradient_checkpointing"] is False  # not posted: unticked
    for key in ("layersync_teacher_block", "learning_rate", "pretrained_model_name_or_path"):
        assert key not in config
    assert config["layersync_student_block"] == 8


def test_numbers_are_converted_and_anything_else_is_left_for_the_schema_to_name():
    _, config = form_to_config({"layersync_enabled": "true", "layersync_student_block": "eight",
                                "layersync_lambda": "2e-1", "learning_rate": "nan", "max_train_steps": "30"})
    assert config["layersync_lambda"] == pytest.approx(0.2)
    assert config["max_train_steps"] == 30
    assert config["learning_rate"] == "nan"  # not a finite number: kept as typed
    with pytest.raises(ConfigError) as exc:
        validate_config(config)
    assert ("layersync_student_block", "must be a whole number, got 'eight'") in exc.value.errors


def test_layersync_fields_do_not_count_while_layersync_is_off():
    """The page disables them (not posted); without JavaScript they are posted and must be ignored."""
    _, config = form_to_config({"layersync_student_block": "40", "layersync_teacher_block": "50", "layersync_lambda": "-1"})
    assert config["layersync_enabled"] is False
    assert not any(key in config for key in ("layersync_student_block", "layersync_teacher_block", "layersync_lambda"))
    validate_config(config)


def test_unknown_posted_keys_reach_the_schema_which_names_them():
    _, config = form_to_config({"layersync_lamda": "0.2"})
    with pytest.raises(ConfigError) as exc:
        validate_config(config)
    assert exc.value.errors == [("layersync_lamda", "unknown config key 'layersync_lamda': did you mean layersync_lambda?")]


def test_form_values_keep_what_the_user_typed():
    values = form_values({"layersync_enabled": "true", "layersync_student_block": " eight ", "name": "x"})
    assert values["layersync_student_block"] == "eight"
    assert values["layersync_enabled"] == "true"
    assert values["use_ema"] == "false"
    assert "name" not in values


def test_config_to_values_fills_every_field():
    values = config_to_values({"layersync_enabled": True, "learning_rate": 0.0001, "output_dir": "/x", "adam_epsilon": 1e-8})
    assert set(values) == set(FORM_FIELDS)
    assert values["layersync_enabled"] == "true"
    assert values["learning_rate"] == "0.0001"
    assert values["adam_epsilon"] == "1e-08"


NOOP = "LayerSync is a no-op: teacher block 8 is the student block 8"


@pytest.mark.parametrize(
    "enabled, student, teacher, noop",
    [
        ("true", "8", "16", False),
        ("true", "8", "8", True),
        ("true", "8", "", True),  # an empty teacher is the student
        ("true", "1", "0", True),  # 1-based-friendly: both mean block 0
        ("false", "8", "8", False),  # LayerSync off: nothing to warn about
        ("true", "", "", False),
    ],
)
def test_the_checks_give_the_schemas_noop_notice_by_the_teacher_field(tmp_path, enabled, student, teacher, noop):
    form = {"layersync_enabled": enabled, "layersync_student_block": student, "layersync_teacher_block": teacher}
    check = check_form(form, model_roots=[], runs_dir=tmp_path)
    notices = check.notices.get("layersync_teacher_block", [])
    assert any("LayerSync is a no-op" in notice for notice in notices) is noop
    assert set(check.notices) <= {"layersync_teacher_block"}


def test_the_checks_give_every_problem_by_its_field_in_the_schemas_words(tmp_path):
    form = {"layersync_enabled": "true", "layersync_student_block": "8", "layersync_teacher_block": "40",
            "layersync_lambda": "0", "resolution": "abc", "pretrained_model_name_or_path": "/elsewhere"}
    check = check_form(form, model_roots=[], runs_dir=tmp_path)
    assert check.errors["resolution"] == "must be a whole number, got 'abc'"
    assert check.errors["layersync_lambda"].startswith("LayerSync weight must be > 0, got 0")
    assert "model directory '/elsewhere' is not allowed" in check.errors["pretrained_model_name_or_path"]
    # the blocks are not judged against the built-in model while the user's model is refused
    assert "layersync_teacher_block" not in check.errors
    with pytest.raises(ConfigError) as exc:
        validate_config(form_to_config(form | {"pretrained_model_name_or_path": ""})[1])
    assert ("layersync_teacher_block", "teacher block 40 does not exist: this model has 16 blocks, choose 1–16") in exc.value.errors
    assert check_form(form_values({}), model_roots=[], runs_dir=tmp_path).errors == {}


def test_family_fields_are_the_registrys_defaults_and_hide_what_a_family_does_not_use():
    assert set(FAMILY_KEYS) == {"resolution", "num_frames", "audio_duration", "learning_rate"}
    assert family_fields("demo") == {"resolution": "16", "num_frames": None, "audio_duration": None, "learning_rate": "0.001"}
    wan, ace = family_fields("wan"), family_fields("ace_step")
    assert wan["num_frames"] == "81" and wan["audio_duration"] is None and wan["resolution"] == "480"
    assert ace["audio_duration"] == "10.0" and ace["num_frames"] is None and ace["resolution"] is None
    assert set(family_table()) == {value for value, _ in FORM_FIELDS["model_family"].choices}
    assert family_fields("no such family") == {key: "" for key in FAMILY_KEYS}  # the checks name it
