"""LTX-Video: LTXVideoTransformer3DModel, trained with flow matching on video latents.

The model takes already-patchified tokens plus the latent grid's frames, height and width, so
``predict`` packs the stored (B, C, T', H', W') latents as LTXPipeline._pack_latents does and
unpacks the output. Blocks: ``transformer_blocks``, each returning the video tokens alone (text enters
by cross-attention), viewed as (B, T', P, D). Latents are normalised with the VAE's latents_mean /
latents_std and scaling_factor as LTXPipeline._denormalize_latents inverts them.
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.families import FAMILIES
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.video import frame_view, sample_kwargs, to_signed

MAX_SEQUENCE_LENGTH = 128  # T5 tokens, LTXPipeline's default
TEMPORAL_FACTOR = FAMILIES["ltxvideo"].temporal_factor  # 8: the VAE compresses 8 frames after the first
# LTXPipeline's rope_interpolation_scale: (VAE temporal factor / frame rate, VAE spatial factor, same); every
# released LTX-Video VAE compresses 8× in time and 32× in space, and the pipeline samples at 25 fps
ROPE_INTERPOLATION_SCALE = (TEMPORAL_FACTOR / 25, 32, 32)


def load_model(config: TrainConfig):
    from diffusers import LTXVideoTransformer3DModel

    return load_component(LTXVideoTransformer3DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    video = frame_view(model, lambda args, kwargs: kwargs.get("num_frames"))  # predict passes the grid by keyword
    return [Block(block, video) for block in model.transformer_blocks]


def pack(latents: torch.Tensor, p: int, p_t: int) -> torch.Tensor:
    """(B, C, T, H, W) → (B, T/p_t · H/p · W/p, C·p_t·p·p), LTXPipeline._pack_latents."""
    b, c, t, h, w = latents.shape
    latents = latents.reshape(b, c, t // p_t, p_t, h // p, p, w // p, p)
    return latents.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def unpack(tokens: torch.Tensor, t: int, h: int, w: int, p: int, p_t: int) -> torch.Tensor:
    """The inverse of ``pack`` for the post-patch grid (t, h, w), LTXPipeline._unpack_latents."""
    tokens = tokens.reshape(len(tokens), t, h, w, -1, p_t, p, p)
    return tokens.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    p, p_t = model.config.patch_size, model.config.patch_size_t
    _, _, t, h, w = x_t.shape
    grid = (t // p_t, h // p, w // p)
    out = model(
        hidden_states=pack(x_t, p, p_t),
        encoder_hidden_states=cond["prompt_embeds"],
        timestep=sigma * 1000,  # LTXPipeline passes the scheduler's timesteps, sigma × 1000
        encoder_attention_mask=cond["prompt_attention_mask"],
        num_frames=grid[0],
        height=grid[1],
        width=grid[2],
        rope_interpolation_scale=ROPE_INTERPOLATION_SCALE,
        return_dict=False,
    )[0]
    return unpack(out, *grid, p, p_t)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe._execution_device,
                                            max_sequence_length=MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def encode_frames(pipe, frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(frames.to(vae.dtype)).latent_dist.mode()
    return pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    frames = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"],
        prompt_attention_mask=prompt_cond["prompt_attention_mask"],
        negative_prompt_embeds=null_cond["prompt_embeds"].expand(n, -1, -1),
        negative_prompt_attention_mask=null_cond["prompt_attention_mask"].expand(n, -1),
        guidance_scale=config.validation_guidance,
        generator=generator,
        **sample_kwargs(config),
    ).frames
    return to_signed(frames)


SPEC = PipelineSpec(
    pipeline_class="LTXPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_frames,
    generate=generate,
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC, "video"),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
