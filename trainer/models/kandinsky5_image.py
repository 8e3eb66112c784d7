"""Kandinsky 5 text-to-image: the same Kandinsky5Transformer3DModel on single frames (T' = 1).

Kandinsky5T2IPipeline encodes images with a Flux-style AutoencoderKL and feeds the transformer
(B, 1, H', W', C) latents; they are stored as (C, H', W') times the VAE's scaling_factor (the pipeline
divides it out and applies no shift) and given the frame axis inside ``predict``. Blocks and text
handling are the video family's (trainer/models/kandinsky5_video.py); a block's image stream is its
(B, S, D) output as is.
"""

import torch

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.kandinsky5_video import (
    LORA_TARGET_MODULES,
    TEXT_COMPONENTS,
    encode_prompts,
    generate_each,
    load_model,
    transformer,
)


def blocks(model) -> list[Block]:
    return [Block(block, tensor_output) for block in model.visual_transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    latents = x_t.permute(0, 2, 3, 1).unsqueeze(1)  # (B, C, H', W') → (B, 1, H', W', C)
    out = transformer(model, latents, sigma, cond, scale_factor=(1.0, 1.0, 1.0))  # the T2I pipeline's rope scale
    return out.squeeze(1).permute(0, 3, 1, 2)


def encode_images(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    return vae.encode(pixels.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    """Kandinsky5T2IPipeline samples at the nearest of its trained sizes (1024² for square images),
    whatever the training resolution."""
    images = generate_each(pipe, prompt_cond, null_cond, height=config.resolution, width=config.resolution,
                           num_inference_steps=config.validation_num_inference_steps,
                           guidance_scale=config.validation_guidance, generator=generator, output_type="pt")
    return images * 2 - 1


SPEC = PipelineSpec(
    pipeline_class="Kandinsky5T2IPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_images,
    generate=generate,
    text_components=TEXT_COMPONENTS,
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=LORA_TARGET_MODULES,
)
