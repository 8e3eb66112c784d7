"""HunyuanVideo text-to-video: HunyuanVideoTransformer3DModel, trained with flow matching on video latents.

Blocks: the double-stream ``transformer_blocks``, then the ``single_transformer_blocks``, one numbering;
the token refiner that prepares the text is not numbered. Every block returns (video, text) with the
text already split off, so element 0 is the video stream, viewed as (B, T', P, D). Latents are stored
as (C, T', H', W') times the VAE's scaling_factor, as HunyuanVideoPipeline divides it out.
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.video import frame_view, hidden_states_input, sample_kwargs, to_signed

TRAINING_GUIDANCE = 1.0  # the guidance-distilled checkpoints are fine-tuned at embedded guidance 1, as SimpleTuner does
MAX_SEQUENCE_LENGTH = 256  # Llama tokens after the prompt template, HunyuanVideoPipeline's default


def load_model(config: TrainConfig):
    from diffusers import HunyuanVideoTransformer3DModel

    return load_component(HunyuanVideoTransformer3DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    p_t = model.config.patch_size_t
    view = frame_view(model, lambda args, kwargs: hidden_states_input(args, kwargs).shape[2] // p_t)

    def video(output):  # (video, text): the text tokens are already split off
        return view(output[0])

    double = [Block(b, video) for b in model.transformer_blocks]
    return double + [Block(b, video) for b in model.single_transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    guidance = torch.full((len(x_t),), TRAINING_GUIDANCE * 1000, device=x_t.device, dtype=x_t.dtype)
    return model(
        hidden_states=x_t,  # (B, C, T', H', W'): the model patchifies and unpatchifies itself
        timestep=sigma * 1000,  # the pipeline passes the scheduler's timesteps, sigma × 1000
        encoder_hidden_states=cond["prompt_embeds"],
        encoder_attention_mask=cond["prompt_attention_mask"],
        pooled_projections=cond["pooled_prompt_embeds"],
        guidance=guidance,  # × 1000, as the pipeline embeds it; ignored by models without guidance_embeds
        return_dict=False,
    )[0]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, pooled, mask = pipe.encode_prompt(prompts, device=pipe._execution_device,
                                              max_sequence_length=MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask, "pooled_prompt_embeds": pooled}


def encode_frames(pipe, frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    return vae.encode(frames.to(vae.dtype)).latent_dist.mode() * vae.config.scaling_factor


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    null = {key: value.expand(n, *value.shape[1:]) for key, value in null_cond.items()}
    distilled = pipe.transformer.config.guidance_embeds
    frames = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"],
        pooled_prompt_embeds=prompt_cond["pooled_prompt_embeds"],
        prompt_attention_mask=prompt_cond["prompt_attention_mask"],
        negative_prompt_embeds=null["prompt_embeds"],
        negative_pooled_prompt_embeds=null["pooled_prompt_embeds"],
        negative_prompt_attention_mask=null["prompt_attention_mask"],
        # distilled models take the guidance as an input; the others get true classifier-free guidance
        guidance_scale=config.validation_guidance if distilled else 1.0,
        true_cfg_scale=1.0 if distilled else config.validation_guidance,
        generator=generator,
        **sample_kwargs(config),
    ).frames
    return to_signed(frames)


SPEC = PipelineSpec(
    pipeline_class="HunyuanVideoPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_frames,
    generate=generate,
    text_components=("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
)

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=pipeline_data(SPEC, "video"),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
