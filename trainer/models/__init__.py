"""The torch half of each model family (the registry itself is trainer/families.py).

A family implementation is a record of plain functions, not a base class: the training loop calls
them in order and reads top to bottom.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.families import FAMILIES


@dataclass(frozen=True)
class FamilyImplementation:
    load_model: Callable[[TrainConfig], nn.Module]
    blocks: Callable[[nn.Module], list[Block]]  # every block, in execution order, one global numbering
    load_data: Callable[[TrainConfig], object]  # → a dataset with .batch(size, generator)
    # (model, x_t, t in [0, 1], conditioning) → predicted velocity
    predict: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    null_condition: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # conditioning dropped for CFG


def implementation(family_name: str) -> FamilyImplementation:
    module_name, attribute = FAMILIES[family_name].implementation.split(":")
    return getattr(importlib.import_module(module_name), attribute)
