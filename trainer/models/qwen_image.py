"""Qwen Image (and its Edit checkpoints): QwenImageTransformer2DModel, flow matching on 2×2-packed latents.

Blocks: the dual-stream ``transformer_blocks``, one list; each returns (text, image), so the image
stream is element 1. Latents are stored as (B, C, H, W): the video VAE's single frame, normalised
with its latents_mean / latents_std as QwenImagePipeline inverts them. Prompts are padded to 512
tokens with a mask (the pipeline pads to the longest prompt of its batch; a cache needs one length),
and each batch is trimmed back to its longest prompt before the forward, so padding costs nothing.
Edit checkpoints train text-to-image here: the folders hold no source images to condition on.
"""

import torch

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.flux import pack, unpack
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 512  # Qwen2.5-VL tokens after the template, QwenImagePipeline.__call__'s default


def load_model(config: TrainConfig):
    from diffusers import QwenImageTransformer2DModel

    model = load_component(QwenImageTransformer2DModel, config.pretrained_model_name_or_path)
    if model.config.use_additional_t_cond or model.config.use_layer3d_rope:
        raise ValueError(
            f"{config.pretrained_model_name_or_path} is a Qwen-Image-Layered transformer (layer decomposition, RGBA "
            "layers as input), which this trainer cannot feed: use a Qwen-Image or Qwen-Image-Edit checkpoint"
        )
    return model


def blocks(model) -> list[Block]:
    return [Block(b, tuple_element(1)) for b in model.transformer_blocks]  # (text, image)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    b, _, h, w = x_t.shape
    mask = cond["prompt_embeds_mask"].bool()
    length = max(1, int(mask.sum(dim=1).max()))  # the masks are prefixes: the batch's longest prompt
    out = model(
        hidden_states=pack(x_t),
        encoder_hidden_states=cond["prompt_embeds"][:, :length],
        encoder_hidden_states_mask=mask[:, :length],
        timestep=sigma,  # the pipeline passes timestep / 1000 = sigma; the model's Timesteps scales it back
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, mask = pipe.encode_prompt(prompts, device=pipe._execution_device, max_sequence_length=MAX_SEQUENCE_LENGTH)
    n, length, dim = embeds.shape
    keep = torch.ones(n, length, dtype=torch.bool, device=embeds.device) if mask is None else mask.bool()
    pad = MAX_SEQUENCE_LENGTH - length
    return {
        "prompt_embeds": torch.cat([embeds, embeds.new_zeros(n, pad, dim)], dim=1),
        "prompt_embeds_mask": torch.cat([keep, keep.new_zeros(n, pad)], dim=1),
    }


def _latent_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape)
    std = torch.tensor(vae.config.latents_std).view(shape)
    return mean.to(like.device, like.dtype), std.to(like.device, like.dtype)


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.dtype)[:, :, None]).latent_dist.mode()  # one frame: (B, C, 1, H, W)
    mean, std = _latent_stats(vae, latents)
    return ((latents - mean) / std)[:, :, 0]  # the pipeline decodes latents · std + mean


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    embeds, mask = prompt_cond["prompt_embeds"].to(pipe.dtype), prompt_cond["prompt_embeds_mask"].bool()
    images = pipe(
        prompt_embeds=embeds, prompt_embeds_mask=mask,
        negative_prompt_embeds=null_cond["prompt_embeds"].to(pipe.dtype).expand_as(embeds),
        negative_prompt_embeds_mask=null_cond["prompt_embeds_mask"].bool().expand_as(mask),
        true_cfg_scale=config.validation_guidance,  # Qwen Image's classifier-free guidance
        height=config.resolution, width=config.resolution, num_inference_steps=config.validation_num_inference_steps,
        generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(pipeline_class="QwenImagePipeline", encode_prompts=encode_prompts, encode_media=encode_media,
                    generate=generate)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
