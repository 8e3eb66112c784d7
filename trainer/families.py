"""The registry of model families, torch-free half.

Each entry says what a user picks (name, label) and how to count the model's blocks without
loading it, so the server can check block indices at submit time. The torch half of each family
(loading, block lists, which output element is the image stream, inputs) lives in the module
named by ``implementation`` and is imported only by the training program.
"""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    description: str
    implementation: str  # "module:attribute" of the torch half
    depth_keys: tuple[str, ...]  # keys of the transformer's config.json whose values add up to the block count
    builtin_config: dict | None = None  # config of the built-in model, when the family has one
    default_learning_rate: float = 1e-4  # fine-tuning rate; a family trained from scratch sets its own


DEMO_MODEL_CONFIG = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 1,
    "hidden_size": 96,
    "num_layers": 16,
    "num_attention_heads": 4,
    "mlp_ratio": 4.0,
    "num_classes": 10,
}

FAMILIES: dict[str, Family] = {
    "demo": Family(
        name="demo",
        label="Demo DiT (built in, 16 blocks, class-conditional digits)",
        description="A small SiT-style flow transformer trained from scratch on the built-in digits; no download.",
        implementation="trainer.models.demo:FAMILY",
        depth_keys=("num_layers",),
        builtin_config=DEMO_MODEL_CONFIG,
        default_learning_rate=1e-3,
    ),
}


class ModelDirError(ValueError):
    """A pretrained model path that cannot be read; the message says what to fix."""


def find_model_config(path: str) -> Path:
    """The transformer's config.json inside a model directory or a diffusers pipeline directory."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelDirError(
            f"model directory {path!r} does not exist: give a local directory written by save_pretrained "
            "(no hub downloads), or leave it empty for the built-in demo model"
        )
    for candidate in (root / "config.json", root / "transformer" / "config.json"):
        if candidate.is_file():
            return candidate
    raise ModelDirError(
        f"{path!r} holds no config.json (looked in it and in its transformer/ folder): "
        "point it at the folder that save_pretrained wrote"
    )


def model_config(family: Family, pretrained_path: str | None) -> dict:
    """The model's own config: the built-in one, or the config.json of a local directory."""
    if pretrained_path is None:
        if family.builtin_config is None:
            raise ModelDirError(f"model family {family.name!r} has no built-in model: set pretrained_model_name_or_path")
        return dict(family.builtin_config)
    config_file = find_model_config(pretrained_path)
    try:
        return json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"cannot read {config_file}: {exc}; the model directory looks damaged") from exc


def model_depth(family: Family, pretrained_path: str | None) -> int:
    """How many blocks the model has, counted as LayerSync counts them, without importing torch."""
    config = model_config(family, pretrained_path)
    missing = [key for key in family.depth_keys if not isinstance(config.get(key), int)]
    if missing:
        raise ModelDirError(
            f"the model's config.json has no integer {', '.join(missing)}: it does not look like a "
            f"{family.label} model; check model_family"
        )
    return sum(config[key] for key in family.depth_keys)
