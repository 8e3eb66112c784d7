"""PixArt Sigma: PixArtTransformer2DModel's DiT blocks (self-attention over the image tokens,
cross-attention to T5), trained as it was pretrained: DDPM noise with its scheduler's prediction type.

The blocks return the image tokens alone, (B, S, D). The model also predicts its learned variance
(out_channels = 2 × in_channels); as in the pipeline, only the first half, the epsilon (or v), is used.
"""

import json
from pathlib import Path

import torch

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 300  # PixArtSigmaPipeline's default T5 length

# The noise schedule PixArt Sigma was trained with, as its pipelines ship it in scheduler/scheduler_config.json
# (PixArt-alpha/PixArt-Sigma-XL-2-*: a DPMSolverMultistepScheduler with these values); used when the model
# directory holds no scheduler, e.g. a bare transformer folder trained from an already encoded dataset.
STANDARD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def load_model(config: TrainConfig):
    from diffusers import PixArtTransformer2DModel

    return load_component(PixArtTransformer2DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    return [Block(block, tensor_output) for block in model.transformer_blocks]


def scheduler_config(config: TrainConfig) -> dict:
    """The pipeline's own scheduler config (in the pipeline directory, or beside a transformer/ folder given
    directly), else the standard PixArt one."""
    root = Path(config.pretrained_model_name_or_path).expanduser()
    pipeline_dir = root.parent if (root / "config.json").is_file() else root
    candidate = pipeline_dir / "scheduler" / "scheduler_config.json"
    return json.loads(candidate.read_text()) if candidate.is_file() else dict(STANDARD_SCHEDULER)


def predict(model, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    # the pipeline passes the scheduler's integer timesteps as they are, and no micro-conditions for Sigma
    out = model(
        x_t,  # (B, C, H, W): the model patchifies and unpatchifies itself
        encoder_hidden_states=cond["prompt_embeds"].to(x_t.dtype),  # (B, 300, 4096)
        encoder_attention_mask=cond["prompt_attention_mask"],  # (B, 300), 1 = token, 0 = padding
        timestep=t,
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]
    if model.config.out_channels // 2 == x_t.shape[1]:
        out = out.chunk(2, dim=1)[0]  # learned sigma: the second half is the variance, not trained here
    return out


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    # clean_caption off: it needs bs4 and ftfy, and the cache must not depend on whether they are installed
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device=pipe._execution_device, clean_caption=False,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    # the posterior's mean (a cache written twice is the same); the pipeline decodes latents / scaling_factor
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


def generate(pipe, prompt_cond, null_cond, config: TrainConfig, generator) -> torch.Tensor:
    """PixArt-style pipelines (PixArt Sigma, Sana): embeddings and attention masks, no resolution binning
    (it would resize the samples to the model's aspect-ratio buckets)."""
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"].float(),
        prompt_attention_mask=prompt_cond["prompt_attention_mask"],
        negative_prompt=None,  # the pipeline refuses its default "" beside negative_prompt_embeds
        negative_prompt_embeds=null_cond["prompt_embeds"].float().expand(n, -1, -1),
        negative_prompt_attention_mask=null_cond["prompt_attention_mask"].expand(n, -1),
        height=config.resolution, width=config.resolution, use_resolution_binning=False,
        num_inference_steps=config.validation_num_inference_steps, guidance_scale=config.validation_guidance,
        generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # [0, 1] → [-1, 1]


SPEC = PipelineSpec(
    pipeline_class="PixArtSigmaPipeline", encode_prompts=encode_prompts, encode_media=encode_media, generate=generate,
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    objective="ddpm", ddpm_scheduler_config=scheduler_config,
    # self-attention (attn1) and cross-attention (attn2) projections of every block
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
