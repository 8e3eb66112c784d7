"""Checkpoints: a folder per step holding the weights (diffusers layout, safetensors), the EMA
weights, the optimizer, the step and the whole run config, so one folder describes the run."""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHECKPOINTS = "checkpoints"
LORA_FILE = "adapter_model.safetensors"


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
        from peft import get_peft_model_state_dict

        (tmp / "lora").mkdir()
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, tmp / "lora" / LORA_FILE)
    else:
        model.save_pretrained(tmp / "transformer", safe_serialization=True)
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale is part of the training state
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "state.json").write_text(json.dumps({**(state or {}), "step": step}))
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


def load_checkpoint(path: Path, model, optimizer, ema=None, scaler=None) -> int:
    """Restore weights, optimizer, EMA and loss scale in place; return the step the checkpoint was taken at."""
    device = str(next(model.parameters()).device)
    if (path / "lora" / LORA_FILE).is_file():
        from peft import set_peft_model_state_dict

        if not is_lora(model):
            raise ValueError(f"{path} holds a LoRA adapter but this run trains the full model: set model_type to lora")
        set_peft_model_state_dict(model, load_file(path / "lora" / LORA_FILE, device=device))
    else:
        if is_lora(model):
            raise ValueError(f"{path} holds full weights but this run trains a LoRA: set model_type to full")
        # every shard (save_pretrained splits models over 10 GB), read on the CPU: no second copy on the GPU
        shards = sorted((path / "transformer").glob("*.safetensors"))
        if not shards:
            raise FileNotFoundError(f"{path}/transformer holds no .safetensors weights: the checkpoint is incomplete")
        weights = {}
        for shard in shards:
            weights.update(load_file(shard, device="cpu"))
        model.load_state_dict(weights, strict=True)
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
