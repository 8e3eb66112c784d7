"""Flux.2 (dev and klein): Flux2Transformer2DModel, flow matching on the VAE's patchified latents.

Blocks: the double-stream ``transformer_blocks``, then the ``single_transformer_blocks``, numbered as
one list. A double block returns (text, image): the image stream is element 1. A single block
returns the joint sequence with the text first, so the text (as long as ``encoder_hidden_states``)
is sliced off.

Flux.2 diffuses in the space its pipeline builds: the VAE latents cut into 2×2 patches (4× the
channels at half the size) and normalised by the VAE's batch-norm statistics. Those are the stored
latents (B, C, H, W); packing is then a plain flatten to (B, H·W, C), with 4-axis (t, h, w, l)
position ids. The pipeline directory decides the text side: Flux2Pipeline (Mistral, guidance-
distilled, no negative prompt) or Flux2KleinPipeline (Qwen3, classifier-free guidance).
"""

import json
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.joint_sequence import double_then_single_blocks
from trainer.models.loading import load_component

TRAINING_GUIDANCE = 1.0  # guidance-distilled checkpoints (Flux.2 dev) train at guidance 1, as Flux does here
MAX_SEQUENCE_LENGTH = 512  # text tokens, the pipelines' default


def load_model(config: TrainConfig):
    from diffusers import Flux2Transformer2DModel

    return load_component(Flux2Transformer2DModel, config.pretrained_model_name_or_path)


blocks = double_then_single_blocks  # double blocks (text, image); single blocks [text, image], text sliced off


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    from diffusers import Flux2Pipeline

    b, c, h, w = x_t.shape
    text = cond["prompt_embeds"]
    guidance = torch.full((b,), TRAINING_GUIDANCE, device=x_t.device) if model.config.guidance_embeds else None
    out = model(
        hidden_states=x_t.flatten(2).transpose(1, 2),  # (B, H·W, C), Flux2Pipeline._pack_latents
        encoder_hidden_states=text,
        timestep=sigma,  # the pipeline passes timestep / 1000 = sigma; the model scales it back
        guidance=guidance,
        txt_ids=Flux2Pipeline._prepare_text_ids(text[:1])[0].to(x_t.device),  # the same for every example
        img_ids=Flux2Pipeline._prepare_latent_ids(x_t[:1])[0].to(x_t.device),
        return_dict=False,
    )[0]
    return out.transpose(1, 2).reshape(b, c, h, w)  # the ids are row-major, so unpacking is the reshape


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _ = pipe.encode_prompt(prompts, device=pipe._execution_device, max_sequence_length=MAX_SEQUENCE_LENGTH)
    return {"prompt_embeds": embeds}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    # the pipeline's own encoding: the latent mode, patchified, batch-norm normalised (decoding inverts it)
    return pipe._encode_vae_image(pixels.to(pipe.vae.dtype), generator=None)


def _generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator, **guidance) -> torch.Tensor:
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"].to(pipe.dtype), height=config.resolution, width=config.resolution,
        guidance_scale=config.validation_guidance, num_inference_steps=config.validation_num_inference_steps,
        generator=generator, output_type="pt", **guidance,
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    return _generate(pipe, prompt_cond, null_cond, config, generator)  # dev: the guidance scale is a model input


def generate_klein(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    negative = null_cond["prompt_embeds"].to(pipe.dtype).expand_as(prompt_cond["prompt_embeds"])
    return _generate(pipe, prompt_cond, null_cond, config, generator, negative_prompt_embeds=negative)


SPEC = PipelineSpec(pipeline_class="Flux2Pipeline", encode_prompts=encode_prompts, encode_media=encode_media,
                    generate=generate)
KLEIN_SPEC = PipelineSpec(pipeline_class="Flux2KleinPipeline", encode_prompts=encode_prompts, encode_media=encode_media,
                          generate=generate_klein)


def pipeline_spec(config: TrainConfig) -> PipelineSpec:
    """Klein or dev, as the pipeline directory's model_index.json names it (dev when there is none)."""
    index = Path(config.pretrained_model_name_or_path).expanduser() / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    return KLEIN_SPEC if name == KLEIN_SPEC.pipeline_class else SPEC


def load_data(config: TrainConfig, device, log):
    return pipeline_data(pipeline_spec(config))(config, device, log)


def sample(config: TrainConfig, model, data, device, path: Path, samplers):
    return pipeline_sampler(pipeline_spec(config))(config, model, data, device, path, samplers)


FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=load_data, sample=sample,
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                         "to_qkv_mlp_proj"),
)
