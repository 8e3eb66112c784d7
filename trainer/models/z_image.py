"""Z-Image: ZImageTransformer2DModel, a single-stream DiT over [image, caption] sequences; flow matching.

Blocks: the main ``layers`` only (config ``n_layers``); the noise and context refiners that run
before them are not numbered. Each layer returns the unified sequence: the image tokens first
((H/2)·(W/2) of them, then padding to a multiple of 32), then the caption. The image tokens are
kept, their count read from the latents at each forward.

The forward takes lists: one (C, 1, H, W) latent and one caption of its own length per example.
Captions are cached padded to 512 tokens with a mask, and unpadded in ``predict``. ZImagePipeline
passes t = 1 − sigma (its time runs from noise at 0 to data at 1) and negates the output, so
``predict`` does both to get the velocity noise − latents. Latents are stored (B, C, H, W), scaled
and shifted as the pipeline inverts them (Flux's VAE).
"""

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.flux import encode_images
from trainer.models.joint_sequence import image_span, model_input
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 512  # Qwen3 tokens, ZImagePipeline's default


def load_model(config: TrainConfig):
    from diffusers import ZImageTransformer2DModel

    return load_component(ZImageTransformer2DModel, config.pretrained_model_name_or_path)


def _image_first(args: tuple, kwargs: dict) -> slice:
    _, frames, h, w = model_input(args, kwargs, "x")[0].shape  # (C, F, H, W)
    p, pf = kwargs.get("patch_size", 2), kwargs.get("f_patch_size", 1)  # the defaults, which the pipeline uses
    return slice(0, (frames // pf) * (h // p) * (w // p))


def blocks(model) -> list[Block]:
    image = image_span(model, _image_first)  # [image, padding, caption]
    return [Block(layer, image) for layer in model.layers]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    captions = [embeds[keep] for embeds, keep in zip(cond["prompt_embeds"], cond["prompt_embeds_mask"].bool(), strict=True)]
    out = model(
        x=list(x_t.unsqueeze(2).unbind(0)),  # one (C, 1, H, W) per example
        t=1 - sigma,
        cap_feats=captions,
        return_dict=False,
    )[0]
    return -torch.stack(out)[:, :, 0]  # (B, C, H, W), negated as the pipeline does


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    # a copy: the pipeline writes the chat-templated prompts back into the list it is given
    embeds, _ = pipe.encode_prompt(list(prompts), device=pipe._execution_device, do_classifier_free_guidance=False,
                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
    padded = embeds[0].new_zeros(len(embeds), MAX_SEQUENCE_LENGTH, embeds[0].shape[-1])
    mask = torch.zeros(len(embeds), MAX_SEQUENCE_LENGTH, dtype=torch.bool, device=padded.device)
    for i, caption in enumerate(embeds):
        padded[i, : len(caption)] = caption
        mask[i, : len(caption)] = True
    return {"prompt_embeds": padded, "prompt_embeds_mask": mask}


def _captions(pipe, cond: dict, n: int) -> list[torch.Tensor]:
    """``n`` unpadded captions, as the pipeline takes them (the null condition's one row, repeated)."""
    embeds, mask = cond["prompt_embeds"].to(pipe.dtype), cond["prompt_embeds_mask"].bool()
    return [embeds[i % len(embeds)][mask[i % len(mask)]] for i in range(n)]


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=_captions(pipe, prompt_cond, n), negative_prompt_embeds=_captions(pipe, null_cond, n),
        # the pipeline computes pos + g·(pos − neg): the usual scale s is g = s − 1 (0: no guidance)
        guidance_scale=config.validation_guidance - 1,
        height=config.resolution, width=config.resolution, num_inference_steps=config.validation_num_inference_steps,
        generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(pipeline_class="ZImagePipeline", encode_prompts=encode_prompts, encode_media=encode_images,
                    generate=generate)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
