"""Stable Diffusion 3 / 3.5: SD3Transformer2DModel's joint (MMDiT) blocks, flow matching.

Each joint block returns (text stream, image stream); the last one returns (None, image stream),
since its text stream is never read again. LayerSync aligns the image stream, element 1.
"""

import torch

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component


def load_model(config: TrainConfig):
    from diffusers import SD3Transformer2DModel

    return load_component(SD3Transformer2DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    return [Block(block, tuple_element(1)) for block in model.transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    # the pipeline passes the scheduler's timesteps, sigma * 1000; the model predicts noise - latents
    return model(
        hidden_states=x_t,  # (B, C, H, W): the model patchifies and unpatchifies itself
        timestep=sigma * 1000.0,
        encoder_hidden_states=cond["prompt_embeds"].to(x_t.dtype),  # (B, 77 + T5 tokens, 4096)
        pooled_projections=cond["pooled_prompt_embeds"].to(x_t.dtype),  # (B, 2048)
        return_dict=False,
    )[0]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    # both CLIPs and T5 as StableDiffusion3Pipeline.encode_prompt joins them (default 256 T5 tokens)
    embeds, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, device=pipe._execution_device,
    )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    # the posterior's mean, so the cache is the same every time it is written; the pipeline decodes
    # latents / scaling_factor + shift_factor, so this is its inverse
    vae = pipe.vae.config
    latents = pipe.vae.encode(pixels).latent_dist.mode()
    return (latents - (vae.shift_factor or 0.0)) * vae.scaling_factor


def generate(pipe, prompt_cond, null_cond, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"].float(),
        pooled_prompt_embeds=prompt_cond["pooled_prompt_embeds"].float(),
        negative_prompt_embeds=null_cond["prompt_embeds"].float().expand(n, -1, -1),
        negative_pooled_prompt_embeds=null_cond["pooled_prompt_embeds"].float().expand(n, -1),
        height=config.resolution, width=config.resolution,
        num_inference_steps=config.validation_num_inference_steps, guidance_scale=config.validation_guidance,
        generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # [0, 1] → [-1, 1]


SPEC = PipelineSpec(
    pipeline_class="StableDiffusion3Pipeline", encode_prompts=encode_prompts, encode_media=encode_media,
    generate=generate,
    text_components=("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3"),
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    # the image stream's projections and the text stream's (add_*), in every joint block
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
