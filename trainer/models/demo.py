"""The demo family: DemoDiT on the built-in digits, flow matching, class labels as the condition."""

from pathlib import Path

import torch

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.data import LatentDataset, load_digits_dataset
from trainer.families import FAMILIES
from trainer.models import FamilyImplementation
from trainer.models.demo_dit import DemoDiT

SAMPLES_PER_CLASS = 5
METRIC_NOISE_OFFSET = 1  # the measured samples' noise differs from the shown grid's, and is fixed per seed


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


def predict(model: DemoDiT, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    return model(x_t, sigma * 1000.0, cond["class_labels"])


def load_data(config: TrainConfig, device, log) -> LatentDataset:
    return load_digits_dataset(config.resolution)


@torch.no_grad()
def euler_sample(model, data: LatentDataset, steps: int, guidance: float, seed: int, labels=None) -> torch.Tensor:
    """Integrate the learned velocity from noise (sigma 1) to data (sigma 0), with classifier-free guidance;
    one sample per label (by default the validation prompts' labels)."""
    labels = data.prompt_cond["class_labels"] if labels is None else labels.to(data.prompt_cond["class_labels"].device)
    null = data.null_cond["class_labels"].expand_as(labels)
    device = labels.device
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((len(labels), *data.latents.shape[1:]), generator=generator, device=device)
    sigmas = torch.linspace(1, 0, steps + 1, device=device)
    for i in range(steps):
        sigma = sigmas[i].expand(len(labels))
        if guidance > 1:
            v_cond, v_null = predict(model, torch.cat([x, x]), torch.cat([sigma, sigma]),
                                     {"class_labels": torch.cat([labels, null])}).chunk(2)
            v = v_null + guidance * (v_cond - v_null)
        else:
            v = predict(model, x, sigma, {"class_labels": labels})
        x = x + (sigmas[i + 1] - sigmas[i]) * v.float()
    return x.clamp(-1, 1)


def sample(config: TrainConfig, model, data: LatentDataset, device, path: Path, samplers) -> Path:
    from trainer.sampling import save_media

    images = euler_sample(model, data, config.validation_num_inference_steps, config.validation_guidance, config.seed)
    return save_media(images.cpu(), path)


def sample_metrics(config: TrainConfig, model, data: LatentDataset, device) -> dict[str, float]:
    """``sample_accuracy``: how many of the class-conditional samples (fixed noise, five of each class) the
    digit classifier reads as the class they were asked for; real held-out digits score about 0.96."""
    from trainer.digits_classifier import accuracy

    labels = torch.arange(10).repeat(SAMPLES_PER_CLASS)
    images = euler_sample(model, data, config.validation_num_inference_steps, config.validation_guidance,
                          config.seed + METRIC_NOISE_OFFSET, labels)
    return {"sample_accuracy": accuracy(images, labels)}


FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=load_data, sample=sample,
    sample_metrics=sample_metrics,
    lora_target_modules=("qkv", "proj"),
)
