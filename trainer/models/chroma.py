"""Chroma: ChromaTransformer2DModel (a pruned Flux), flow matching on 2×2-packed latents.

Blocks: the double-stream ``transformer_blocks``, then the ``single_transformer_blocks``, numbered as
one list. A double block returns (text, image): the image stream is element 1. A single block
returns the joint sequence with the text first, so the text (as long as ``encoder_hidden_states``)
is sliced off. Latents are stored unpacked (B, C, H, W), scaled and shifted as ChromaPipeline
inverts them. The T5 mask keeps the prompt and its first padding token, as the pipeline builds it;
it is stored as a boolean mask, which the attention reads as keep/drop (diffusers issue #12116: a
float 0/1 mask would be added to the scores instead). With gradient checkpointing, diffusers 0.42's
forward does not hand the mask to the single blocks, so there they attend to the padding too.
"""

import torch

from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.flux import encode_images, image_ids, pack, unpack
from trainer.models.joint_sequence import double_then_single_blocks
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 512  # T5 tokens, ChromaPipeline's default


def load_model(config: TrainConfig):
    from diffusers import ChromaTransformer2DModel

    return load_component(ChromaTransformer2DModel, config.pretrained_model_name_or_path)


blocks = double_then_single_blocks  # double blocks (text, image); single blocks [text, image], text sliced off


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    b, _, h, w = x_t.shape
    text = cond["prompt_embeds"]
    image_mask = torch.ones(b, (h // 2) * (w // 2), dtype=torch.bool, device=x_t.device)
    out = model(
        hidden_states=pack(x_t),
        encoder_hidden_states=text,
        timestep=sigma,  # the pipeline passes timestep / 1000 = sigma; the model scales it back
        txt_ids=torch.zeros(text.shape[1], 3, device=x_t.device, dtype=x_t.dtype),
        img_ids=image_ids(h, w, x_t.device, x_t.dtype),
        attention_mask=torch.cat([cond["attention_mask"].bool(), image_mask], dim=1),  # (B, text + image)
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    embeds, _, mask, _, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device=pipe._execution_device,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return {"prompt_embeds": embeds, "attention_mask": mask.bool()}


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["prompt_embeds"])
    images = pipe(
        prompt_embeds=prompt_cond["prompt_embeds"].to(pipe.dtype),
        prompt_attention_mask=prompt_cond["attention_mask"].bool(),
        negative_prompt_embeds=null_cond["prompt_embeds"].to(pipe.dtype).expand(n, -1, -1),
        negative_prompt_attention_mask=null_cond["attention_mask"].bool().expand(n, -1),
        height=config.resolution, width=config.resolution, guidance_scale=config.validation_guidance,
        num_inference_steps=config.validation_num_inference_steps, generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(pipeline_class="ChromaPipeline", encode_prompts=encode_prompts, encode_media=encode_images,
                    generate=generate)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
)
