"""A client's config, checked as the server checks it, and a config file imported for a client.

Both go through the trainer's one importer and one schema, so the API, the form and the CLI give the
same config and the same words; the server adds only its own rule that a client's paths stay inside
the folders it allows (app.paths).
"""

from collections.abc import Sequence
from pathlib import Path

from app.paths import MODEL_KEY, check_client_paths
from trainer.config import ConfigError, TrainConfig, config_to_json, validate_config
from trainer.config_files import import_config

# the keys whose checks read the model (its depth, its UNet's levels)
MODEL_DEPENDENT = {"layersync_student_block", "layersync_teacher_block", "layersync_pairs"}


class ImportProblems(ConfigError):
    """A config file that imports but does not validate: every problem, with what the file said."""

    def __init__(self, errors: list[tuple[str, str]], config: dict, warnings: list[str]):
        super().__init__(errors)
        self.config, self.warnings = config, warnings


def check_config(config: object, *, model_roots: Sequence[Path], runs_dir: Path) -> TrainConfig:
    """The validated config, or ConfigError with every problem: the paths the server refuses, and what
    the schema finds in the rest. A refused path is not looked at: its key gets no second message, and
    without the model the blocks cannot be judged (the built-in model's depth would mislead)."""
    try:
        checked = check_client_paths(config, model_roots=model_roots, runs_dir=runs_dir)
    except ConfigError as exc:  # raised for a dict only: anything else is the schema's to name
        refused = exc.errors
        unjudged = {key for key, _ in refused} | (MODEL_DEPENDENT if any(k == MODEL_KEY for k, _ in refused) else set())
        rest = {key: value for key, value in config.items() if key not in unjudged}
        try:
            validate_config(check_client_paths(rest, model_roots=model_roots, runs_dir=runs_dir))
        except ConfigError as more:
            refused = refused + [(key, message) for key, message in more.errors if key not in unjudged]
        raise ConfigError(refused) from None
    return validate_config(checked)


def import_file(data: object, *, model_roots: Sequence[Path], runs_dir: Path) -> dict:
    """A config file's JSON (ours or SimpleTuner's) → ``{"config": every key, "warnings": [...]}``, the
    config ``layersync train --config FILE --print-config`` prints. Raises ImportProblems (every problem,
    and the keys the file set, so a form can show them by their fields) or ConfigError (not a config)."""
    flat, warnings = import_config(data)
    try:
        config = check_config(flat, model_roots=model_roots, runs_dir=runs_dir)
    except ConfigError as exc:
        raise ImportProblems(exc.errors, flat, warnings) from None
    return {"config": config_to_json(config), "warnings": warnings}
