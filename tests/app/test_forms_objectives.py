"""The form's timestep and loss-weighting fields: a section under Training, and the resolution shift's
"unset" kept apart from "off" (unset takes the model's scheduler config)."""

from app.forms import FORM_FIELDS, SECTIONS, default_values, form_to_config
from trainer.config import validate_config


def test_the_objective_keys_sit_under_training_and_the_auto_shift_keeps_its_unset_value():
    section = next(s for s in SECTIONS if s.id == "objective")
    assert section.parent == "training"
    assert {f.key for f in section.fields} >= {"weighting_scheme", "flow_schedule_shift", "snr_gamma", "noise_offset"}
    assert FORM_FIELDS["flow_schedule_auto_shift"].kind == "select"
    assert {"validation_resolution", "repeats"} <= set(FORM_FIELDS)
    _, config = form_to_config(default_values())
    assert "flow_schedule_auto_shift" not in config  # not sent as false: the scheduler config decides
    assert validate_config(config).flow_schedule_auto_shift is None
    _, config = form_to_config(dict(default_values(), flow_schedule_auto_shift="false", weighting_scheme="logit_normal"))
    parsed = validate_config(config)
    assert parsed.flow_schedule_auto_shift is False and parsed.weighting_scheme == "logit_normal"
