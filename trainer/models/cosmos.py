"""Cosmos-Predict2: CosmosTransformer3DModel, trained with flow matching on Wan-VAE video latents.

Objective. The Cosmos2 pipelines (Cosmos2TextToImagePipeline, Cosmos2VideoToWorldPipeline) run an
EDM-style loop, but their preconditioning is rectified flow in disguise: at EDM noise level s they
feed the model x · c_in = (1 - t) · x0 + t · noise with t = s / (1 + s), pass ``timestep = t`` (not
× 1000), and read x0 = c_skip · x + c_out · out = (1 - t) · x - t · out, which holds exactly when
out = noise - x0. So the model is a flow-matching velocity model at sigma = t, and ``predict`` passes
sigma as is. Cosmos 1.0 (CosmosTextToWorldPipeline, EDMEulerScheduler) is true EDM and is refused.

Blocks: ``transformer_blocks``, each returning the video tokens alone (text enters by cross-attention),
viewed as (B, T', P, D). Latents are stored as (C, T', H', W'), (z - latents_mean) / latents_std ·
sigma_data, as the pipelines normalise them. Video2World models take a condition-mask channel: training
gives them no conditioning frame (all zeros), text to video. Real checkpoints concatenate a padding
mask, which diffusers resizes with torchvision; it is all zeros here as in the pipelines.
"""

import json
from pathlib import Path

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component
from trainer.models.video import frame_view, hidden_states_input
from trainer.models.wan import latent_stats

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, the Cosmos pipelines' default
VIDEO_FPS = 16  # Cosmos2VideoToWorldPipeline's default frame rate (its rope scales time by it); images pass none
COSMOS1 = {"CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline", "EDMEulerScheduler"}


class NoSafetyChecker:
    """Stands in for cosmos_guardrail's checker, which the Cosmos pipelines build when given none and
    which downloads its own models: encoding never calls it, and ``generate`` decodes with the VAE."""


def refuse_cosmos1(path: str) -> None:
    root = Path(path).expanduser()
    names = {json.loads(f.read_text()).get("_class_name")
             for f in (root / "model_index.json", root / "scheduler" / "scheduler_config.json") if f.is_file()}
    if names & COSMOS1:
        raise ValueError(
            f"{path} is a Cosmos 1.0 model ({', '.join(sorted(names & COSMOS1))}): it is trained with EDM "
            "preconditioning, which this trainer does not implement. Use a Cosmos-Predict2 model (a "
            "Cosmos2TextToImagePipeline or Cosmos2VideoToWorldPipeline folder), which is a flow-matching model"
        )


def load_model(config: TrainConfig):
    from diffusers import CosmosTransformer3DModel
    from diffusers.utils import is_torchvision_available

    refuse_cosmos1(config.pretrained_model_name_or_path)
    model = load_component(CosmosTransformer3DModel, config.pretrained_model_name_or_path)
    if model.config.concat_padding_mask and not is_torchvision_available():
        raise ValueError("this Cosmos model concatenates a padding mask, which diffusers resizes with torchvision: "
                         "pip install torchvision")
    return model


def load_data(config: TrainConfig, device, log):
    refuse_cosmos1(config.pretrained_model_name_or_path)  # before its VAE is loaded as a Wan VAE
    return encode(config, device, log)


def blocks(model) -> list[Block]:
    p_t = model.config.patch_size[0]
    video = frame_view(model, lambda args, kwargs: hidden_states_input(args, kwargs).shape[2] // p_t)
    return [Block(block, video) for block in model.transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    b, c, t, h, w = x_t.shape
    extra = {}
    if model.config.in_channels == c + 1:  # Video2World: the condition-mask channel, no frame given
        extra["condition_mask"] = x_t.new_zeros(b, 1, t, h, w)
    if model.config.concat_padding_mask:  # nothing is padding; zeros resize to zeros at any size
        extra["padding_mask"] = x_t.new_zeros(1, 1, h, w)
    return model(
        hidden_states=x_t,
        timestep=sigma,  # t in [0, 1], as the pipelines pass it (see the module docstring)
        encoder_hidden_states=cond["prompt_embeds"],
        fps=VIDEO_FPS if t > 1 else None,
        return_dict=False,
        **extra,
    )[0]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, device=pipe._execution_device,
                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds": embeds}


def encode_frames(pipe, frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(frames.to(vae.dtype)).latent_dist.mode()
    mean, std = latent_stats(vae, latents)
    return (latents - mean) / std * pipe.scheduler.config.sigma_data


@torch.no_grad()
def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    """diffusers has no text-only Cosmos-Predict2 video pipeline (Video2World needs a first frame), so
    the sample is Euler steps of the flow from sigma 1 to 0 with classifier-free guidance, decoded by
    the pipeline's VAE as the pipelines decode."""
    model, vae = pipe.transformer, pipe.vae
    embeds = prompt_cond["prompt_embeds"]
    n, device = len(embeds), embeds.device
    size = config.resolution // pipe.vae_scale_factor_spatial
    frames = (config.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    x = torch.randn((n, vae.config.z_dim, frames, size, size), generator=generator, device=device)
    sigmas = torch.linspace(1, 0, config.validation_num_inference_steps + 1, device=device)
    for i in range(config.validation_num_inference_steps):
        sigma = sigmas[i].expand(n)
        v = predict(model, x, sigma, {"prompt_embeds": embeds}).float()
        if config.validation_guidance > 1:
            v_null = predict(model, x, sigma, {"prompt_embeds": null_cond["prompt_embeds"].expand_as(embeds)}).float()
            v = v_null + config.validation_guidance * (v - v_null)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    mean, std = latent_stats(vae, x)
    latents = x * std / pipe.scheduler.config.sigma_data + mean
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0].float().clamp(-1, 1)


SPEC = PipelineSpec(
    pipeline_class="Cosmos2VideoToWorldPipeline",
    encode_prompts=encode_prompts,
    encode_media=encode_frames,
    generate=generate,
    load_kwargs={"safety_checker": NoSafetyChecker()},
)
encode = pipeline_data(SPEC, "video")

FAMILY = FamilyImplementation(
    load_model=load_model,
    blocks=blocks,
    predict=predict,
    load_data=load_data,
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
