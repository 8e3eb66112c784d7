"""Stable Diffusion XL: UNet2DConditionModel, trained as it was pretrained (DDPM noise, its scheduler's
prediction type), conditioned as StableDiffusionXLPipeline conditions it.

Blocks: the BasicTransformerBlocks inside the UNet's Transformer2DModel attentions, numbered in
execution order (down blocks, mid block, up blocks); trainer/families.py:unet_blocks counts the same
list from config.json. Each returns its tokens (B, H·W, C), image only. Blocks of different UNet levels
differ in width and token count, so a pair must come from one level (checked at submit time).
Kolors shares all of this except its text encoder (trainer/models/kolors.py).
"""

import json
from pathlib import Path

import torch

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.sd3 import generate  # the same pipeline call: embeddings, pooled embeddings, the null as negative

# SDXL's noise schedule as its pipelines ship it in scheduler/scheduler_config.json; used when the model
# directory holds no scheduler (a bare unet/ folder trained from an already encoded dataset)
STANDARD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


def load_model(config: TrainConfig):
    from diffusers import UNet2DConditionModel

    return load_component(UNet2DConditionModel, config.pretrained_model_name_or_path, subfolders=("unet",))


def blocks(model) -> list[Block]:
    from diffusers.models.attention import BasicTransformerBlock

    found = []
    for part in [*model.down_blocks, model.mid_block, *model.up_blocks]:
        for attention in getattr(part, "attentions", None) or []:  # None: a UNet without a mid block
            found += [m for m in attention.modules() if isinstance(m, BasicTransformerBlock)]
    return [Block(block, tensor_output) for block in found]  # (B, H·W, C)


def scheduler_config(config: TrainConfig, standard: dict = STANDARD_SCHEDULER) -> dict:
    """The pipeline's own scheduler config (in the pipeline directory, or beside a unet/ folder given
    directly), else ``standard``."""
    root = Path(config.pretrained_model_name_or_path).expanduser()
    pipeline_dir = root.parent if (root / "config.json").is_file() else root
    candidate = pipeline_dir / "scheduler" / "scheduler_config.json"
    return json.loads(candidate.read_text()) if candidate.is_file() else dict(standard)


def predict(model, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    # the pipeline passes the scheduler's integer timesteps as they are
    return model(
        x_t,  # (B, 4, H/8, W/8)
        t,
        encoder_hidden_states=cond["prompt_embeds"].to(x_t.dtype),  # (B, 77, 2048)
        added_cond_kwargs={
            "text_embeds": cond["pooled_prompt_embeds"].to(x_t.dtype),  # (B, 1280)
            "time_ids": cond["add_time_ids"].to(x_t.dtype),  # (B, 6)
        },
        return_dict=False,
    )[0]


def add_time_ids(n: int, config: TrainConfig) -> torch.Tensor:
    """SDXL's micro-conditions: original size, crop top-left, target size. Training images are resized
    (and center-cropped) to the resolution, so they are conditioned as the pipeline conditions a sample of
    that size: (res, res, 0, 0, res, res)."""
    res = float(config.resolution)
    return torch.tensor([[res, res, 0.0, 0.0, res, res]]).repeat(n, 1)


def zero_empty(pipe, prompts: list[str], tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """With force_zeros_for_empty_prompt the pipeline's unconditional embedding is zeros, not the encoded "":
    empty captions (and the dropped caption) train as that same unconditional input."""
    if not pipe.config.force_zeros_for_empty_prompt:
        return tensors
    empty = torch.tensor([p == "" for p in prompts], device=tensors[0].device)
    return [torch.where(empty.view(-1, *[1] * (t.ndim - 1)), torch.zeros_like(t), t) for t in tensors]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device=pipe._execution_device, do_classifier_free_guidance=False)
    embeds, pooled = zero_empty(pipe, prompts, [embeds, pooled])
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "add_time_ids": add_time_ids(len(prompts), config)}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    if vae.config.force_upcast and vae.dtype != torch.float32:  # overflows in half precision; the pipeline upcasts
        vae.to(torch.float32)
    # the posterior's mean (a cache written twice is the same)
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:  # the pipeline decodes latents * std / scaling_factor + mean
        mean = torch.tensor(mean, device=latents.device).view(1, -1, 1, 1)
        std = torch.tensor(std, device=latents.device).view(1, -1, 1, 1)
        return (latents - mean) * vae.config.scaling_factor / std
    return latents * vae.config.scaling_factor  # the pipeline decodes latents / scaling_factor


# samples: StableDiffusionXLPipeline builds the same (res, res, 0, 0, res, res) time ids from height and width
SPEC = PipelineSpec(
    pipeline_class="StableDiffusionXLPipeline", encode_prompts=encode_prompts, encode_media=encode_media,
    generate=generate, model_component="unet",
    text_components=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    objective="ddpm", ddpm_scheduler_config=scheduler_config,
    # self-attention (attn1) and cross-attention (attn2) projections of every transformer block
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
