"""Checkpoints: a folder per step holding the weights (diffusers layout, safetensors), the EMA
weights, the optimizer, the step and the whole run config, so one folder describes the run.

A LoRA checkpoint holds ``pytorch_lora_weights.safetensors`` as the family's pipeline writes it
(trainer/lora_format.py), so ``pipe.load_lora_weights(checkpoint_folder)`` applies it; a full one holds
``transformer/`` (``<Transformer class>.from_pretrained`` loads it). Once a run completes, ``final/``
holds its last weights alone, in the same layouts (trainer/outputs.py lists them all)."""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.lora_format import load_lora, save_lora
from trainer.outputs import CHECKPOINTS, FINAL, RUN_CONFIG_FILE, STATE_FILE, checkpoint_kind


def is_lora(model) -> bool:
    return any("lora_" in name for name, _ in model.named_parameters())


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder is complete once its state.json exists)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step_") and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(output_dir, step, model, optimizer, config: dict, ema=None, scaler=None, total_limit=None,
                    state: dict | None = None) -> Path:
    """Write to a temporary folder, then rename: a crash mid-write never leaves a half checkpoint. ``state``:
    more of the loop's state (JSON) kept beside the step in state.json (read back by ``checkpoint_state``)."""
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if is_lora(model):  # the adapter only; the frozen weights are the pretrained model's
        save_lora(tmp, model, config)
    else:
        model.save_pretrained(tmp / "transformer", safe_serialization=True)
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale is part of the training state
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / STATE_FILE).write_text(json.dumps({**(state or {}), "step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if total_limit:
        for old in checkpoint_dirs(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(output_dir, which: str) -> Path | None:
    """'latest' → the newest complete checkpoint of output_dir (None when there is none yet);
    else a checkpoint folder path, which must exist."""
    if which == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(which)
    if not (path / "state.json").is_file():
        raise FileNotFoundError(f"{which} is not a checkpoint folder (no state.json): pass 'latest' or a checkpoints/step_* folder")
    return path


def checkpoint_state(path: Path) -> dict:
    """A checkpoint's state.json: its step and the loop state saved with it."""
    return json.loads((Path(path) / "state.json").read_text())


def full_weights(path: Path) -> dict[str, torch.Tensor]:
    """A full checkpoint's weights by name: every shard (save_pretrained splits models over 10 GB), read on the
    CPU, so no second copy lands on the GPU."""
    shards = sorted((Path(path) / "transformer").glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{path}/transformer holds no .safetensors weights: the checkpoint is incomplete")
    weights = {}
    for shard in shards:
        weights.update(load_file(shard, device="cpu"))
    return weights


def load_checkpoint(path: Path, model, optimizer, ema=None, scaler=None) -> int:
    """Restore weights, optimizer, EMA and loss scale in place; return the step the checkpoint was taken at."""
    if checkpoint_kind(path) == "lora":  # either layout: this trainer's older lora/ folder is still read
        if not is_lora(model):
            raise ValueError(f"{path} holds a LoRA adapter but this run trains the full model: set model_type to lora")
        load_lora(path, model)
    else:
        if is_lora(model):
            raise ValueError(f"{path} holds full weights but this run trains a LoRA: set model_type to full")
        model.load_state_dict(full_weights(path), strict=True)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=next(model.parameters()).device, weights_only=True))
    if ema is not None:
        ema_file = path / "ema.safetensors"
        if ema_file.is_file():
            ema.load_state_dict(load_file(ema_file, device=str(next(model.parameters()).device)))
        else:
            ema.copy_from(model)
    if scaler is not None and scaler.is_enabled() and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    return json.loads((path / "state.json").read_text())["step"]


def save_final(output_dir, step, model, config: dict, ema=None) -> Path:
    """The completed run's weights alone in ``final/``, ready to load: ``pipe.load_lora_weights("final")``
    for a LoRA, ``<Transformer class>.from_pretrained("final")`` for a full fine-tune. With EMA, the averaged
    weights go in ``final/ema/`` in the same layout. Written beside and renamed, like a checkpoint."""
    root = Path(output_dir)
    final, tmp = root / FINAL, root / f".tmp_{FINAL}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(tmp, model, config)
    if ema is not None:
        with ema.applied(model):
            _save_weights(tmp / "ema", model, config)
    (tmp / RUN_CONFIG_FILE).write_text(json.dumps(config, indent=2))  # config.json is the model's own here
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "kind": "lora" if is_lora(model) else "full"}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def _save_weights(folder: Path, model, config: dict) -> None:
    if is_lora(model):
        folder.mkdir(parents=True, exist_ok=True)
        save_lora(folder, model, config)
    else:
        model.save_pretrained(folder, safe_serialization=True)
