"""Checkpoints of a model sharded by FSDP2 (``distributed: fsdp``), in the single-process layout.

Every rank takes part in gathering the full weights and optimizer state onto the CPU; rank 0 writes them
as trainer/checkpoint.py does (``transformer/`` with the model's config and safetensors weights, an
``optimizer.pt`` keyed by parameter position), so a sharded run resumes at any world size, with FSDP,
DDP or one process, and a single-process checkpoint resumes sharded.
"""

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from trainer.checkpoint import CHECKPOINTS, checkpoint_dirs, full_weights
from trainer.outputs import checkpoint_kind

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _trainable_names(model) -> list[str]:
    """The optimizer's parameters in its order (make_optimizer takes the trainable ones in model order)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def save_sharded_checkpoint(output_dir, step, model, optimizer, config: dict, total_limit, dist) -> Path:
    """Gather (every rank) and write (rank 0) the step's checkpoint; returns its folder."""
    weights = get_model_state_dict(model, options=FULL)
    by_name = get_optimizer_state_dict(model, optimizer, options=FULL)
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step_{step:07d}"
    if not dist.is_main:
        return final
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    by_position = {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]} for group in by_name["param_groups"]],
    }
    tmp = root / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "transformer").mkdir(parents=True)
    model.save_config(tmp / "transformer")
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp / "transformer" / WEIGHTS)
    torch.save(by_position, tmp / "optimizer.pt")
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if total_limit:
        for old in checkpoint_dirs(output_dir)[:-total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_sharded_checkpoint(path: Path, model, optimizer) -> int:
    """Every rank reads the whole checkpoint and keeps its shards; returns the checkpoint's step."""
    if checkpoint_kind(path) == "lora":
        raise ValueError(f"{path} holds a LoRA adapter but this run trains the full model sharded: set model_type to lora")
    set_model_state_dict(model, full_weights(path), options=StateDictOptions(full_state_dict=True, strict=True))
    by_position = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    names = _trainable_names(model)
    by_name = {
        "state": {names[i]: value for i, value in by_position["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in by_position["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    return json.loads((path / "state.json").read_text())["step"]
