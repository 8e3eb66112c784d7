"""Flux and Flux Kontext: FluxTransformer2DModel, trained with flow matching on packed latents.

Blocks: the double-stream ``transformer_blocks``, then the ``single_transformer_blocks``, numbered
as one list. Both return (text, image); the image stream is element 1, so no slicing is needed.
Latents are stored unpacked (B, C, H, W), scaled and shifted as FluxPipeline inverts them, and
packed into 2×2 patches inside ``predict``, as the pipeline does.
"""

import torch

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component

TRAINING_GUIDANCE = 1.0  # guidance-distilled checkpoints (Flux dev) are fine-tuned at guidance 1, as SimpleTuner does
MAX_SEQUENCE_LENGTH = 512  # T5 tokens, FluxPipeline's default


def load_model(config: TrainConfig):
    from diffusers import FluxTransformer2DModel

    return load_component(FluxTransformer2DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    image = tuple_element(1)
    return [Block(b, image) for b in model.transformer_blocks] + [Block(b, image) for b in model.single_transformer_blocks]


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H/2·W/2, 4C), FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H/2·W/2, 4C) → (B, C, H, W), FluxPipeline._unpack_latents."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Position ids of the packed latent grid (row, column in channels 1 and 2)."""
    ids = torch.zeros(h // 2, w // 2, 3, device=device, dtype=dtype)
    ids[..., 1] += torch.arange(h // 2, device=device, dtype=dtype)[:, None]
    ids[..., 2] += torch.arange(w // 2, device=device, dtype=dtype)[None, :]
    return ids.reshape(-1, 3)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    b, _, h, w = x_t.shape
    text = cond["prompt_embeds"]
    guidance = torch.full((b,), TRAINING_GUIDANCE, device=x_t.device) if model.config.guidance_embeds else None
    out = model(
        hidden_states=pack(x_t),
        timestep=sigma,  # the pipeline passes timestep / 1000 = sigma; the model scales it back
        guidance=guidance,
        pooled_projections=cond["pooled_prompt_embeds"],
        encoder_hidden_states=text,
        txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
        img_ids=image_ids(h, w, x_t.device, x_t.dtype),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    prompt_embeds, pooled, _ = pipe.encode_prompt(
        prompts, prompt_2=None, device=pipe._execution_device, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled}


def encode_images(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    return (latents - vae.config.shift_factor) * vae.config.scaling_factor


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"],
        pooled_prompt_embeds=prompt_cond["pooled_prompt_embeds"],
        height=config.resolution,
        width=config.resolution,
        num_inference_steps=config.validation_num_inference_steps,
        guidance_scale=config.validation_guidance,
        generator=generator,
        output_type="pt",
    ).images
    return images * 2 - 1


SPEC = PipelineSpec(
    pipeline_class="FluxPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_images,
    generate=generate,
    text_components=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
