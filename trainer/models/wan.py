"""Wan 2.1 / 2.2 text-to-video: WanTransformer3DModel, trained with flow matching on video latents.

Blocks: ``model.blocks``, each returning the video tokens alone (text enters by cross-attention), viewed
as (B, T', P, D). Latents are stored as (C, T', H', W'), normalised with the VAE's per-channel
latents_mean / latents_std as WanPipeline inverts them. Wan 2.2 A14B's second expert
(``transformer_2``, the low-noise half) is neither trained nor loaded: only ``transformer`` is, and its
validation samples come from the trained expert alone at every step.
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.video import frame_view, hidden_states_input, sample_kwargs, to_signed

MAX_SEQUENCE_LENGTH = 226  # UMT5 tokens, WanPipeline's default


def load_model(config: TrainConfig):
    from diffusers import WanTransformer3DModel

    return load_component(WanTransformer3DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    p_t = model.config.patch_size[0]
    video = frame_view(model, lambda args, kwargs: hidden_states_input(args, kwargs).shape[2] // p_t)
    return [Block(block, video) for block in model.blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    return model(
        hidden_states=x_t,  # (B, C, T', H', W'): the model patchifies and unpatchifies itself
        timestep=sigma * 1000,  # WanPipeline passes the scheduler's timesteps, sigma × 1000
        encoder_hidden_states=cond["prompt_embeds"],
        return_dict=False,
    )[0]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=MAX_SEQUENCE_LENGTH,
                                   device=pipe._execution_device)
    return {"prompt_embeds": embeds}


def latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel mean and std, shaped to broadcast over (B, C, T, H, W)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like)
    return mean, std


def encode_frames(pipe, frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(frames.to(vae.dtype)).latent_dist.mode()
    mean, std = latent_stats(vae, latents)
    return (latents - mean) / std  # WanPipeline decodes latents * std + mean


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    pipe.register_to_config(boundary_ratio=None)  # no second expert loaded: the trained one takes every step
    embeds = prompt_cond["prompt_embeds"]
    frames = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=null_cond["prompt_embeds"].expand_as(embeds),
        guidance_scale=config.validation_guidance,
        generator=generator,
        **sample_kwargs(config),
    ).frames
    return to_signed(frames)


SPEC = PipelineSpec(
    pipeline_class="WanPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_frames,
    generate=generate,
    load_kwargs={"transformer_2": None},
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC, "video"),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
