"""LongCat Image: LongCatImageTransformer2DModel, flow matching on 2×2-packed latents (Flux-like).

Blocks: the double-stream ``transformer_blocks``, then the ``single_transformer_blocks``, numbered as
one list. Both kinds return (text, image), so the image stream is element 1 throughout. The prompt is
always 512 Qwen2.5-VL tokens (the pipeline pads to that length and passes no mask); text positions
count 0…511 and image positions start at 512, as LongCatImagePipeline builds them. Latents are
stored unpacked (B, C, H, W), scaled and shifted as the pipeline inverts them (Flux's VAE).
"""

import torch

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.flux import encode_images, pack, unpack
from trainer.models.loading import load_component

TOKENIZER_MAX_LENGTH = 512  # LongCatImagePipeline.tokenizer_max_length: the prompt length; image positions start there


def load_model(config: TrainConfig):
    from diffusers import LongCatImageTransformer2DModel

    return load_component(LongCatImageTransformer2DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    image = tuple_element(1)  # double and single blocks both return (text, image)
    return [Block(b, image) for b in (*model.transformer_blocks, *model.single_transformer_blocks)]


def text_ids(length: int, device) -> torch.Tensor:
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids

    return prepare_pos_ids(modality_id=0, type="text", start=(0, 0), num_token=length).to(device)


def image_ids(h: int, w: int, device) -> torch.Tensor:
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import prepare_pos_ids

    start = (TOKENIZER_MAX_LENGTH, TOKENIZER_MAX_LENGTH)
    return prepare_pos_ids(modality_id=1, type="image", start=start, height=h // 2, width=w // 2).to(device)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    _, _, h, w = x_t.shape
    text = cond["prompt_embeds"]
    out = model(
        hidden_states=pack(x_t),
        encoder_hidden_states=text,
        timestep=sigma,  # the pipeline passes timestep / 1000 = sigma; the model scales it back
        txt_ids=text_ids(text.shape[1], x_t.device),
        img_ids=image_ids(h, w, x_t.device),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _ = pipe.encode_prompt(prompts)
    return {"prompt_embeds": embeds}


def _pass_embeddings_through(pipe) -> None:
    """LongCatImagePipeline.encode_prompt takes len(prompt) even when handed prompt_embeds (diffusers
    0.42), so it fails without a prompt: hand the cached embeddings through with their positions."""

    def encode_prompt(prompt=None, num_images_per_prompt=1, prompt_embeds=None):
        return prompt_embeds, text_ids(prompt_embeds.shape[1], prompt_embeds.device)

    pipe.encode_prompt = encode_prompt


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    _pass_embeddings_through(pipe)
    embeds = prompt_cond["prompt_embeds"].to(pipe.dtype)
    images = pipe(
        prompt_embeds=embeds, negative_prompt_embeds=null_cond["prompt_embeds"].to(pipe.dtype).expand_as(embeds),
        height=config.resolution, width=config.resolution, guidance_scale=config.validation_guidance,
        num_inference_steps=config.validation_num_inference_steps, generator=generator, output_type="pt",
        enable_prompt_rewrite=False,  # rewriting runs the text encoder, which sampling leaves out
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(
    pipeline_class="LongCatImagePipeline", encode_prompts=encode_prompts, encode_media=encode_images, generate=generate,
    text_components=("text_encoder", "tokenizer", "text_processor"),
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
