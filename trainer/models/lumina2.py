"""Lumina 2: Lumina2Transformer2DModel, flow matching as Lumina2Pipeline samples it.

Blocks: the joint ``layers`` (the caption and noise refiners before them are not numbered). Each layer
returns one sequence per sample: that sample's caption tokens (as many as its attention mask keeps), then
its image tokens, then padding up to the batch's longest. So the image tokens start at a different place in
each sample; a forward pre-hook reads the caption lengths from the mask and the image token count from the
latent size, and the stream selector picks each sample's image tokens, (B, H/p·W/p, D).

Lumina counts time from noise (0) to image (1): the pipeline passes ``1 - sigma`` and negates the model's
output before its scheduler step, so the model predicts latents - noise; ``predict`` does both.
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.joint_sequence import model_input
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 256  # Lumina2Pipeline's default Gemma length


def load_model(config: TrainConfig):
    from diffusers import Lumina2Transformer2DModel

    return load_component(Lumina2Transformer2DModel, config.pretrained_model_name_or_path, subfolders=("transformer",))


def image_tokens(model):
    """A stream selector picking each sample's image tokens out of the joint sequence."""
    where: dict = {}

    def record(module, args, kwargs):
        latents = model_input(args, kwargs, "hidden_states", 0)  # (B, C, H, W)
        mask = model_input(args, kwargs, "encoder_attention_mask", 3)  # (B, L): the caption tokens kept
        p = module.config.patch_size
        # sample i's image tokens sit right after its mask.sum() caption tokens, as the model places them
        # (the model reads these lengths to the host itself, so this costs no extra sync)
        where["starts"] = mask.sum(dim=1).tolist()
        where["count"] = (latents.shape[-2] // p) * (latents.shape[-1] // p)

    previous = getattr(model, "_layersync_tokens_hook", None)
    if previous is not None:  # blocks() called again: one hook per model is enough
        previous.remove()
    model._layersync_tokens_hook = model.register_forward_pre_hook(record, with_kwargs=True)

    def stream(output: torch.Tensor) -> torch.Tensor:
        # slices, not a gather: under gradient checkpointing this runs inside the checkpointed block in the
        # first forward only, so it must save nothing for backward (a gather would save its index)
        n = where["count"]
        return torch.stack([output[i, start : start + n] for i, start in enumerate(where["starts"])])  # (B, N, D)

    return stream


def blocks(model) -> list[Block]:
    stream = image_tokens(model)
    return [Block(layer, stream) for layer in model.layers]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    out = model(
        hidden_states=x_t,  # (B, C, H, W): the model patchifies and unpatchifies itself
        timestep=1 - sigma,  # Lumina's t: 0 is noise, 1 the image
        encoder_hidden_states=cond["prompt_embeds"].to(x_t.dtype),  # (B, 256, D_text)
        encoder_attention_mask=cond["prompt_attention_mask"],  # (B, 256), 1 = caption token
        return_dict=False,
    )[0]
    return -out  # latents - noise → the flow target noise - latents


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    # the pipeline puts its system prompt before each prompt but encodes the negative "" bare: an empty caption
    # (and the dropped one) is that same unconditional input
    texts = [f"{pipe.system_prompt} <Prompt Start> {p}" if p else "" for p in prompts]
    embeds, mask = pipe._get_gemma_prompt_embeds(
        texts, device=pipe._execution_device, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    vae = pipe.vae
    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()  # the mean: a cache written twice is the same
    # the pipeline decodes latents / scaling_factor + shift_factor
    return (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"].float(),
        prompt_attention_mask=prompt_cond["prompt_attention_mask"],
        negative_prompt_embeds=null_cond["prompt_embeds"].float().expand(n, -1, -1),
        negative_prompt_attention_mask=null_cond["prompt_attention_mask"].expand(n, -1),
        height=config.resolution, width=config.resolution,
        num_inference_steps=config.validation_num_inference_steps, guidance_scale=config.validation_guidance,
        generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # [0, 1] → [-1, 1]


SPEC = PipelineSpec(pipeline_class="Lumina2Pipeline", encode_prompts=encode_prompts, encode_media=encode_media,
                    generate=generate)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    # the attention projections of every layer (refiners included)
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
