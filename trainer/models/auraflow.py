"""AuraFlow: joint MMDiT blocks, then single DiT blocks over [register tokens, text, image]; flow matching.

Numbering: joint blocks 1..num_mmdit_layers, then single blocks. A joint block returns
(text, image); a single block returns the whole joint sequence with the 8 register tokens and the
text first, so its image stream is the last (H/p)·(W/p) tokens. That count is read from the latents
each forward (a pre-hook on the model), so every block yields (B, image tokens, D).
"""

import torch
from diffusers import AuraFlowTransformer2DModel

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.joint_sequence import image_span, model_input
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 256  # the pipeline's default T5 length; the transformer sees register tokens + these


def load_model(config: TrainConfig) -> AuraFlowTransformer2DModel:
    return load_component(AuraFlowTransformer2DModel, config.pretrained_model_name_or_path)


def blocks(model: AuraFlowTransformer2DModel) -> list[Block]:
    p = model.config.patch_size

    def image_tokens(args: tuple, kwargs: dict) -> slice:  # the last (H/p)·(W/p) tokens of the joint sequence
        height, width = model_input(args, kwargs, "hidden_states").shape[-2:]
        return slice(-((height // p) * (width // p)), None)

    joint = [Block(block, tuple_element(1)) for block in model.joint_transformer_blocks]  # (text, image)
    single_stream = image_span(model, image_tokens)
    return joint + [Block(block, single_stream) for block in model.single_transformer_blocks]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    # the pipeline passes t / 1000 = sigma; the model's own Timesteps scales by 1000
    embeds = cond["prompt_embeds"].to(x_t.dtype)  # cached in the encoders' dtype (bf16 on a GPU)
    return model(x_t, encoder_hidden_states=embeds, timestep=sigma, return_dict=False)[0]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device=pipe.device, max_sequence_length=MAX_SEQUENCE_LENGTH
    )
    # the pipeline hands the mask back repeated over the embedding width, (B, L·D); one column is enough
    return {"prompt_embeds": embeds, "prompt_attention_mask": mask.view(embeds.shape)[..., 0]}


def encode_media(pipe, pixels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    # the pipeline decodes latents / scaling_factor (no shift)
    latents = pipe.vae.encode(pixels.to(pipe.vae.dtype)).latent_dist.sample()
    return latents * pipe.vae.config.scaling_factor


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"], prompt_attention_mask=prompt_cond["prompt_attention_mask"],
        negative_prompt_embeds=null_cond["prompt_embeds"].expand(n, -1, -1),
        negative_prompt_attention_mask=null_cond["prompt_attention_mask"].expand(n, -1),
        height=config.resolution, width=config.resolution, guidance_scale=config.validation_guidance,
        num_inference_steps=config.validation_num_inference_steps, generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(
    pipeline_class="AuraFlowPipeline", encode_prompts=encode_prompts, encode_media=encode_media, generate=generate,
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC, "image"),
    sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
