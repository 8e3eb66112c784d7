"""Sana: SanaTransformer2DModel's linear-attention DiT blocks, flow matching, Gemma 2 captions.

The blocks return the image tokens alone, (B, S, D). Sana's pipeline descends from PixArt's (the same
prompt embeddings and attention masks), so its samples are drawn the same way.
"""

import inspect

import torch

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.pixart_sigma import generate

MAX_SEQUENCE_LENGTH = 300  # SanaPipeline's default Gemma length


def load_model(config: TrainConfig):
    from diffusers import SanaTransformer2DModel

    model = load_component(SanaTransformer2DModel, config.pretrained_model_name_or_path)
    if model.config.guidance_embeds:
        raise ValueError(
            "this Sana transformer embeds a guidance scale (guidance_embeds: a Sana Sprint model), which "
            "SanaPipeline cannot drive and this trainer does not train: use a SanaPipeline model (Sana 600M/1.6B)"
        )
    return model


def blocks(model) -> list[Block]:
    return [Block(block, tensor_output) for block in model.transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    # as SanaPipeline: the scheduler's timesteps (sigma * 1000) times the model's timestep_scale;
    # the model predicts noise - latents
    return model(
        x_t,  # (B, C, H, W): the model patchifies and unpatchifies itself
        encoder_hidden_states=cond["prompt_embeds"].to(x_t.dtype),  # (B, 300, 2304)
        encoder_attention_mask=cond["prompt_attention_mask"],  # (B, 300), 1 = token, 0 = padding
        timestep=sigma * 1000.0 * model.config.timestep_scale,
        return_dict=False,
    )[0]


def _human_instruction(pipe) -> list[str]:
    """The complex human instruction SanaPipeline puts before every prompt by default (read from its
    signature, so it stays the installed pipeline's own)."""
    return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    """As SanaPipeline encodes them: a caption after the complex human instruction, the empty (negative)
    prompt without it, so an empty caption is the dropped condition. Either way 300 tokens."""
    captions = [i for i, p in enumerate(prompts) if p]
    empty = [i for i, p in enumerate(prompts) if not p]
    embeds, masks = [], []
    for indices, instruction in ((captions, _human_instruction(pipe)), (empty, None)):
        if indices:
            e, m, _, _ = pipe.encode_prompt(
                [prompts[i] for i in indices], do_classifier_free_guidance=False, device=pipe._execution_device,
                clean_caption=False, max_sequence_length=MAX_SEQUENCE_LENGTH, complex_human_instruction=instruction,
            )
            embeds.append(e)
            masks.append(m)
    inverse = torch.argsort(torch.tensor(captions + empty))  # back to the prompts' order
    return {"prompt_embeds": torch.cat(embeds)[inverse], "prompt_attention_mask": torch.cat(masks)[inverse]}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    # the DC-AE's latent is deterministic; the pipeline decodes latents / scaling_factor
    return pipe.vae.encode(pixels).latent * pipe.vae.config.scaling_factor


SPEC = PipelineSpec(
    pipeline_class="SanaPipeline", encode_prompts=encode_prompts, encode_media=encode_media, generate=generate,
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    # linear self-attention (attn1) and cross-attention (attn2) projections of every block
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
