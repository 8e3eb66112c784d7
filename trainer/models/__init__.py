"""The torch half of each model family (the registry itself is trainer/families.py).

A family implementation is a record of plain functions, not a base class: the training loop calls
them in order and reads top to bottom. Every family trains on a ``LatentDataset`` (latents plus a
dict of conditioning tensors); how a family gets one (the demo's digits, or the family's own
diffusers pipeline encoding a folder of images) is its ``load_data``.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.data import LatentDataset
from trainer.families import find_family
from trainer.sampling import Samplers

Log = Callable[..., None]  # log(message, level="info")


@dataclass(frozen=True)
class FamilyImplementation:
    # config → the transformer (or UNet), loaded from the local directory with local_files_only
    load_model: Callable[[TrainConfig], nn.Module]
    # every block, in execution order, one global numbering, each with the selector of its image stream
    blocks: Callable[[nn.Module], list[Block]]
    # (model, noisy latents as the dataset holds them, timesteps, conditioning dict) → the model's prediction,
    # same shape as the latents. Timesteps are the objective's: sigma in [0, 1] for "flow", integers for "ddpm".
    predict: Callable[[nn.Module, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
    # (config, device, log) → the encoded training data
    load_data: Callable[[TrainConfig, torch.device, Log], LatentDataset]
    # "flow": x = (1 - sigma) * latents + sigma * noise, target noise - latents;
    # "ddpm": the scheduler's noising and prediction type (epsilon, v_prediction or sample)
    objective: str = "flow"
    # (config) → the DDPM scheduler config (num_train_timesteps, beta schedule, prediction_type) for "ddpm"
    ddpm_scheduler_config: Callable[[TrainConfig], dict] | None = None
    # (config, model, data, device, path without suffix, the run's trainer.sampling.Samplers, where a sampler
    # keeps what it builds once per run) → the written sample file, or None with no sampler
    sample: Callable[[TrainConfig, nn.Module, LatentDataset, torch.device, Path, Samplers], Path | None] | None = None
    # (config, model, data, device) → extra validation metrics by name, measured on the model as validated
    # (the demo's: how many of its class-conditional samples a digit classifier reads as their class)
    sample_metrics: Callable[[TrainConfig, nn.Module, LatentDataset, torch.device], dict[str, float]] | None = None
    # modules a LoRA adapter wraps (peft target_modules)
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def implementation(family_name: str) -> FamilyImplementation:
    module_name, attribute = find_family(family_name).implementation.split(":")
    return getattr(importlib.import_module(module_name), attribute)
