"""What a run folder offers a person, read without torch (the server imports this too).

A run's outputs are its complete checkpoints ``checkpoints/step_XXXXXXX/`` (complete once their
``state.json`` exists) and, once training has finished, ``final/``: the last weights in the layout a
person loads directly (``pipe.load_lora_weights("final")`` for a LoRA, ``<Transformer>.from_pretrained
("final")`` for a full fine-tune). A LoRA checkpoint holds ``pytorch_lora_weights.safetensors`` (the
diffusers layout), or ``lora/adapter_model.safetensors`` in runs written before that layout existed.
"""

import json
from pathlib import Path

CHECKPOINTS = "checkpoints"
FINAL = "final"
STATE_FILE = "state.json"
RUN_CONFIG_FILE = "layersync_config.json"  # the run's config in final/ (whose config.json, for a full model, is the model's)
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
OLD_LORA_WEIGHTS = "lora/adapter_model.safetensors"  # runs from before the diffusers layout


def checkpoint_kind(folder: str | Path) -> str:
    """'lora' when the folder holds a LoRA adapter (either layout), else 'full'."""
    folder = Path(folder)
    return "lora" if (folder / LORA_WEIGHTS).is_file() or (folder / OLD_LORA_WEIGHTS).is_file() else "full"


def _step(folder: Path) -> int | None:
    try:
        step = json.loads((folder / STATE_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def list_checkpoints(output_dir: str | Path) -> list[dict]:
    """The run's complete checkpoints and its final weights, oldest first:
    ``[{"name": "step_0000010" | "final", "step": int, "kind": "lora" | "full", "path": str}]``.
    ``path`` is the folder, ``output_dir`` joined with ``checkpoints/<name>`` or ``final``.
    Folders being written (``.tmp_*``) or without a readable ``state.json`` are left out."""
    root = Path(output_dir)
    found = []
    candidates = sorted((root / CHECKPOINTS).iterdir()) if (root / CHECKPOINTS).is_dir() else []
    for folder in candidates:
        if folder.is_dir() and folder.name.startswith("step_") and folder.name[5:].isdigit():
            step = _step(folder)
            if step is not None:
                found.append({"name": folder.name, "step": step, "kind": checkpoint_kind(folder), "path": str(folder)})
    final = root / FINAL
    step = _step(final) if final.is_dir() else None
    if step is not None:
        found.append({"name": FINAL, "step": step, "kind": checkpoint_kind(final), "path": str(final)})
    # the final weights come after the checkpoint of the same step
    return sorted(found, key=lambda c: (c["step"], c["name"] == FINAL))


def run_config_of(folder: str | Path) -> dict:
    """The whole run config an output folder was trained with: ``config.json`` of a checkpoint,
    ``layersync_config.json`` of ``final/``. Raises FileNotFoundError / ValueError naming the file."""
    folder = Path(folder)
    path = folder / (RUN_CONFIG_FILE if (folder / RUN_CONFIG_FILE).is_file() else "config.json")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no run config ({RUN_CONFIG_FILE} or config.json): it is not a checkpoint of this trainer")
    config = json.loads(path.read_text())
    if not isinstance(config, dict) or "model_family" not in config:
        raise ValueError(f"{path} is not a run config (no model_family): it is not a checkpoint of this trainer")
    return config
