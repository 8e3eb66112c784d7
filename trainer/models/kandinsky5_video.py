"""Kandinsky 5 text-to-video: Kandinsky5Transformer3DModel, trained with flow matching on video latents.

Blocks: the ``visual_transformer_blocks`` (the ``text_transformer_blocks`` before them see only the
text, so they are not numbered). A visual block returns the video tokens alone (text enters by
cross-attention), viewed as (B, T', P, D). The model takes channels-last latents (B, T', H', W', C);
they are stored as (C, T', H', W') times the VAE's scaling_factor, as Kandinsky5T2VPipeline divides it
out, and permuted inside ``predict``.

The transformer takes no text mask: the pipeline trims a batch's Qwen embeddings to its longest
prompt. So each prompt is encoded alone and stored zero-padded with its length, and ``predict`` trims
the batch the same way. Training uses full attention (sparse_params=None), not the "nabla" sparse
attention that the pipeline switches on for the 10-second models (it needs flex attention on a GPU).
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.video import frame_view, hidden_states_input, sample_kwargs, to_signed

MAX_SEQUENCE_LENGTH = 512  # Qwen tokens after the prompt template, the pipelines' default
VAE_SPATIAL_FACTOR = 8
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
LORA_TARGET_MODULES = ("to_query", "to_key", "to_value", "self_attention.out_layer", "cross_attention.out_layer")


def load_model(config: TrainConfig):
    from diffusers import Kandinsky5Transformer3DModel

    return load_component(Kandinsky5Transformer3DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    p_t = model.config.patch_size[0]
    video = frame_view(model, lambda args, kwargs: hidden_states_input(args, kwargs).shape[1] // p_t)  # channels-last
    return [Block(block, video) for block in model.visual_transformer_blocks]


def transformer(model, latents: torch.Tensor, sigma: torch.Tensor, cond: dict, scale_factor) -> torch.Tensor:
    """The model on channels-last latents (B, T', H', W', C), as both Kandinsky 5 pipelines call it."""
    if model.config.visual_cond:  # an image-condition input: zeros and an empty mask, as Kandinsky5T2VPipeline gives
        latents = torch.cat([latents, torch.zeros_like(latents), torch.zeros_like(latents[..., :1])], dim=-1)
    _, t, h, w, _ = latents.shape
    p = model.config.patch_size
    length = int(cond["prompt_lengths"].max())  # the pipeline's batch is as long as its longest prompt
    device = latents.device
    return model(
        hidden_states=latents,
        encoder_hidden_states=cond["prompt_embeds"][:, :length],
        timestep=sigma * 1000,  # the pipelines pass the scheduler's timesteps, sigma × 1000
        pooled_projections=cond["pooled_prompt_embeds"],
        visual_rope_pos=[torch.arange(n // k, device=device) for n, k in zip((t, h, w), p, strict=True)],
        text_rope_pos=torch.arange(length, device=device),
        scale_factor=scale_factor,
        sparse_params=None,
        return_dict=False,  # Kandinsky returns the tensor itself, not a tuple
    )


def rope_scale(height: int, width: int) -> tuple:
    """Kandinsky5T2VPipeline._get_scale_factor, from the frame size in pixels."""
    return (1, 2, 2) if 480 <= height <= 854 and 480 <= width <= 854 else (1, 3.16, 3.16)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    _, _, _, h, w = x_t.shape
    scale = rope_scale(h * VAE_SPATIAL_FACTOR, w * VAE_SPATIAL_FACTOR)
    out = transformer(model, x_t.permute(0, 2, 3, 4, 1), sigma, cond, scale)  # (B, T', H', W', C)
    return out.permute(0, 4, 1, 2, 3)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    """One prompt at a time, so each keeps its own length whatever side the tokenizer pads."""
    embeds, pooled, lengths = [], [], []
    for prompt in prompts:
        qwen, clip, _ = pipe.encode_prompt([prompt], max_sequence_length=MAX_SEQUENCE_LENGTH,
                                           device=pipe._execution_device)
        embeds.append(torch.nn.functional.pad(qwen, (0, 0, 0, MAX_SEQUENCE_LENGTH - qwen.shape[1])))
        pooled.append(clip)
        lengths.append(qwen.shape[1])
    return {"prompt_embeds": torch.cat(embeds), "pooled_prompt_embeds": torch.cat(pooled),
            "prompt_lengths": torch.tensor(lengths)}


def encode_frames(pipe, frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    return vae.encode(frames.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor


def pipeline_text(cond: dict, i: int, prefix: str = "") -> dict:
    """Row ``i`` of the stored text as the pipelines take it: trimmed, with its cumulative lengths."""
    length = int(cond["prompt_lengths"][i])
    embeds = cond["prompt_embeds"]
    return {f"{prefix}prompt_embeds_qwen": embeds[i : i + 1, :length],
            f"{prefix}prompt_embeds_clip": cond["pooled_prompt_embeds"][i : i + 1],
            f"{prefix}prompt_cu_seqlens": torch.tensor([0, length], dtype=torch.int32, device=embeds.device)}


def generate_each(pipe, prompt_cond: dict, null_cond: dict, **call) -> torch.Tensor:
    """One prompt a pipeline call, so no prompt is padded to another's length; the empty prompt is the negative."""
    n = len(prompt_cond["prompt_embeds"])
    return torch.cat([pipe(**pipeline_text(prompt_cond, i), **pipeline_text(null_cond, 0, "negative_"), **call)[0]
                      for i in range(n)])


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    return to_signed(generate_each(pipe, prompt_cond, null_cond, guidance_scale=config.validation_guidance,
                                   generator=generator, **sample_kwargs(config)))


SPEC = PipelineSpec(
    pipeline_class="Kandinsky5T2VPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_frames,
    generate=generate,
    text_components=TEXT_COMPONENTS,
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC, "video"),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=LORA_TARGET_MODULES,
)
