"""The demo family: DemoDiT on the built-in digits."""

import torch
from torch import nn

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.data import load_digits_dataset
from trainer.families import FAMILIES
from trainer.models import FamilyImplementation
from trainer.models.demo_dit import DemoDiT


def load_model(config: TrainConfig) -> DemoDiT:
    if config.pretrained_model_name_or_path is None:
        model_config = dict(FAMILIES["demo"].builtin_config, sample_size=config.resolution)
        torch.manual_seed(config.seed)  # the initial weights belong to the seed too
        return DemoDiT(**model_config)
    model = DemoDiT.from_pretrained(config.pretrained_model_name_or_path, local_files_only=True)
    if model.config.sample_size != config.resolution:
        raise ValueError(
            f"the model in {config.pretrained_model_name_or_path} was built for {model.config.sample_size}px images "
            f"but resolution is {config.resolution}: set resolution to {model.config.sample_size}"
        )
    return model


def blocks(model: DemoDiT) -> list[Block]:
    return [Block(block, tensor_output) for block in model.blocks]


def predict(model: DemoDiT, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x_t, t * 1000.0, labels)


def null_condition(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    return torch.full_like(labels, model.config.num_classes)


def load_data(config: TrainConfig):
    return load_digits_dataset(config.resolution)


FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, load_data=load_data, predict=predict, null_condition=null_condition
)
