"""HiDream I1: HiDreamImageTransformer2DModel, flow matching; the model patchifies the latents itself.

Blocks: the ``double_stream_blocks``, then the ``single_stream_blocks`` (each a HiDreamBlock wrapper),
numbered as one list. A double block returns (image, text): the image stream is element 0. A single
block returns the joint sequence with the image first, so its first (H/p)·(W/p) tokens are kept,
a count read from the latents at each forward.

The condition is what HiDreamImagePipeline.encode_prompt gives: T5 states, the Llama 3.1 hidden
states of every layer (stored batch first, (N, layers, L, D); the model takes layers first) and the
two CLIPs' pooled embeddings. The pipeline passes the scheduler's timestep (sigma · 1000) and
negates the output: the model predicts latents − noise, so ``predict`` negates it back. Latents are
stored (B, C, H, W), scaled and shifted as the pipeline inverts them (Flux's VAE).
"""

import torch

from trainer.capture import Block, tuple_element
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.flux import encode_images
from trainer.models.joint_sequence import image_span, model_input
from trainer.models.loading import load_component

MAX_SEQUENCE_LENGTH = 128  # T5 and Llama tokens, HiDreamImagePipeline's default


def load_model(config: TrainConfig):
    from diffusers import HiDreamImageTransformer2DModel

    return load_component(HiDreamImageTransformer2DModel, config.pretrained_model_name_or_path)


def blocks(model) -> list[Block]:
    p = model.config.patch_size

    def image_first(args: tuple, kwargs: dict) -> slice:
        latents = model_input(args, kwargs, "hidden_states")  # (B, C, H, W)
        return slice(0, (latents.shape[-2] // p) * (latents.shape[-1] // p))

    single = image_span(model, image_first)  # single blocks: [image, text]
    return ([Block(b, tuple_element(0)) for b in model.double_stream_blocks]
            + [Block(b, single) for b in model.single_stream_blocks])


def _unpatchify(out: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """The training-mode output (B, C, tokens, p·p) → (B, C, H, W), as the model's inference mode lays it out."""
    b, c = out.shape[:2]
    return out.view(b, c, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    _, _, h, w = x_t.shape
    out = model(
        hidden_states=x_t,
        timesteps=sigma * 1000,  # the pipeline passes the scheduler's timestep
        encoder_hidden_states_t5=cond["prompt_embeds_t5"],
        encoder_hidden_states_llama3=cond["prompt_embeds_llama3"].transpose(0, 1),  # (layers, B, L, D)
        pooled_embeds=cond["pooled_prompt_embeds"],
        return_dict=False,
    )[0]
    if model.training and not model.config.force_inference_output:  # the model leaves its training output patchified
        out = _unpatchify(out, h, w, model.config.patch_size)
    return -out  # the pipeline negates the output: velocity noise − latents


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, do_classifier_free_guidance=False, device=pipe._execution_device,
        max_sequence_length=MAX_SEQUENCE_LENGTH,
    )
    return {"prompt_embeds_t5": t5, "prompt_embeds_llama3": llama.transpose(0, 1), "pooled_prompt_embeds": pooled}


def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    n = len(prompt_cond["pooled_prompt_embeds"])
    cond = {key: value.to(pipe.dtype) for key, value in prompt_cond.items()}
    null = {key: value.to(pipe.dtype).expand(n, *value.shape[1:]) for key, value in null_cond.items()}
    # the pipeline resizes every request to the area of default_sample_size²: make that the training resolution
    pipe.default_sample_size = config.resolution // pipe.vae_scale_factor
    images = pipe(
        prompt_embeds_t5=cond["prompt_embeds_t5"], prompt_embeds_llama3=cond["prompt_embeds_llama3"].transpose(0, 1),
        pooled_prompt_embeds=cond["pooled_prompt_embeds"],
        negative_prompt_embeds_t5=null["prompt_embeds_t5"],
        negative_prompt_embeds_llama3=null["prompt_embeds_llama3"].transpose(0, 1),
        negative_pooled_prompt_embeds=null["pooled_prompt_embeds"],
        height=config.resolution, width=config.resolution, guidance_scale=config.validation_guidance,
        num_inference_steps=config.validation_num_inference_steps, generator=generator, output_type="pt",
    ).images
    return images * 2 - 1  # the pipeline's [0, 1] → [-1, 1]


SPEC = PipelineSpec(
    pipeline_class="HiDreamImagePipeline", encode_prompts=encode_prompts, encode_media=encode_images, generate=generate,
    text_components=tuple(f"{kind}{n}" for n in ("", "_2", "_3", "_4") for kind in ("text_encoder", "tokenizer")),
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC), sample=pipeline_sampler(SPEC),
    lora_target_modules=("to_q", "to_k", "to_v", "to_out", "to_q_t", "to_k_t", "to_v_t", "to_out_t"),
)
