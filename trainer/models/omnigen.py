"""OmniGen: OmniGenTransformer2DModel, a Phi-3 language model that is also the denoiser.

There is no text encoder: the prompt goes in as token ids, wrapped in OmniGenPipeline's instruction
template, and the model embeds them itself. Its ``layers`` (the blocks, numbered 1 to num_layers) all run
over one sequence: the prompt tokens (left-padded), one time token, then the image tokens. The image
tokens are always the last (H/p)·(W/p), so the stream selector slices them off the end.

``predict`` rebuilds what the pipeline's collator (OmniGenCollator) gives the model: a causal mask over the
prompt and the time token, the image tokens attending to everything but padding, and position ids that skip
the padding. Time runs as in the released scheduler (FlowMatchEulerDiscreteScheduler with invert_sigmas and
one training step): the model gets ``1 - sigma`` (0 is noise) and predicts latents - noise, so ``predict``
negates. Samples are drawn with the pipeline's own Euler loop over these token ids (the pipeline itself only
takes prompt strings), guided by the dropped caption.
"""

import importlib.util
from pathlib import Path

import torch

from trainer.capture import Block
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, encode_folder
from trainer.encoded import is_encoded_folder
from trainer.models import FamilyImplementation
from trainer.models.joint_sequence import image_span, model_input
from trainer.models.loading import load_component
from trainer.models.sdxl import encode_media  # OmniGen's VAE is SDXL's, scaled the same way

MAX_TOKENS = 256  # prompt tokens kept per caption, the instruction template included


def load_model(config: TrainConfig):
    from diffusers import OmniGenTransformer2DModel

    return load_component(OmniGenTransformer2DModel, config.pretrained_model_name_or_path, subfolders=("transformer",))


def blocks(model) -> list[Block]:
    p = model.config.patch_size

    def last_image_tokens(args, kwargs) -> slice:
        height, width = model_input(args, kwargs, "hidden_states", 0).shape[-2:]
        return slice(-(height // p) * (width // p), None)

    stream = image_span(model, last_image_tokens)  # (B, H/p·W/p, D)
    return [Block(layer, stream) for layer in model.layers]


def attention_inputs(text_mask: torch.Tensor, image_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """OmniGenCollator's attention mask (B, S, S) and position ids (B, S) for left-padded prompts
    ``text_mask`` (B, L) followed by the time token and ``image_tokens`` image tokens."""
    b, length = text_mask.shape
    size = length + 1 + image_tokens
    real = torch.cat([text_mask.bool(), text_mask.new_ones(b, 1 + image_tokens, dtype=torch.bool)], dim=1)  # (B, S)
    query = torch.arange(size, device=text_mask.device)[:, None]
    key = torch.arange(size, device=text_mask.device)[None, :]
    sees = (key <= query) | (query > length)  # prompt and time token: causal; image tokens: everything
    mask = (sees[None] & real[:, None, :]) | ~real[:, :, None]  # padding is never seen (its own rows see all)
    positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # 0 on the padding, then 0, 1, 2, …
    return mask, positions


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    p = model.config.patch_size
    text_mask = cond["text_mask"]  # (B, MAX_TOKENS), the prompt at the end
    # the pipeline pads to the batch's longest prompt: drop the columns that are padding in every row
    longest = int(text_mask.sum(dim=1).max())
    text_mask, input_ids = text_mask[:, -longest:], cond["input_ids"][:, -longest:]
    mask, positions = attention_inputs(text_mask, (x_t.shape[-2] // p) * (x_t.shape[-1] // p))
    out = model(
        hidden_states=x_t,  # (B, 4, H/8, W/8): the model patchifies itself
        timestep=1 - sigma,  # OmniGen's t: 0 is noise, 1 the image
        input_ids=input_ids,
        input_img_latents=[],  # text to image: no input images
        input_image_sizes={},
        attention_mask=mask.to(x_t.dtype),
        position_ids=positions,
        return_dict=False,
    )[0]
    return -out  # latents - noise → the flow target noise - latents


def prompt_ids(processor, prompt: str) -> list[int]:
    """The pipeline's token ids for ``prompt``: its instruction template, the caption shortened (from the end,
    by words) until it fits MAX_TOKENS."""
    words = prompt.split()
    while True:
        ids = processor.process_multi_modal_prompt(" ".join(words), None)["input_ids"]
        if len(ids) <= MAX_TOKENS or not words:
            return ids[-MAX_TOKENS:]
        words = words[: -max(1, len(words) // 10)]


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    processor = pipe.multimodal_processor
    input_ids = torch.full((len(prompts), MAX_TOKENS), processor.collator.pad_token_id, dtype=torch.long)
    text_mask = torch.zeros((len(prompts), MAX_TOKENS), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids = prompt_ids(processor, prompt)
        input_ids[i, -len(ids):] = torch.tensor(ids)  # left-padded, as the collator pads
        text_mask[i, -len(ids):] = 1
    return {"input_ids": input_ids, "text_mask": text_mask}


@torch.no_grad()
def denoise(model, latents: torch.Tensor, prompt_cond: dict, null_cond: dict, steps: int, guidance: float):
    """OmniGenPipeline's loop: Euler from sigma 1 to 0 in ``steps`` even steps, guided by the null condition."""
    n = len(latents)
    sigmas = torch.linspace(1, 0, steps + 1, device=latents.device)
    cond = {key: torch.cat([value, null_cond[key].expand_as(value)]) for key, value in prompt_cond.items()}
    for i in range(steps):
        sigma = sigmas[i].expand(2 * n)
        v_cond, v_null = predict(model, torch.cat([latents, latents]).to(model.dtype), sigma, cond).float().chunk(2)
        latents = latents + (sigmas[i + 1] - sigmas[i]) * (v_null + guidance * (v_cond - v_null))
    return latents


def sample(config: TrainConfig, model, data, device: torch.device, path: Path, samplers) -> Path | None:
    """Validation images: ``denoise`` from fixed noise, decoded by the pipeline directory's VAE."""
    from diffusers import AutoencoderKL

    from trainer.sampling import save_media

    vae_dir = Path(config.pretrained_model_name_or_path).expanduser() / "vae"
    if not (vae_dir / "config.json").is_file() or not data.prompt_cond:
        return None  # a bare transformer folder: no VAE to decode with
    vae = samplers.get(str(vae_dir), lambda: AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).to(device).eval())
    generator = torch.Generator(device=device).manual_seed(config.seed)
    n = len(data.prompt_cond["input_ids"])
    side = config.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    noise = torch.randn((n, model.config.in_channels, side, side), generator=generator, device=device)
    latents = denoise(model, noise, data.prompt_cond, data.null_cond, config.validation_num_inference_steps,
                      config.validation_guidance)
    with torch.no_grad():
        images = vae.decode(latents / vae.config.scaling_factor).sample  # the pipeline decodes latents / scaling_factor
    return save_media(images.float().clamp(-1, 1).cpu(), path)


SPEC = PipelineSpec(pipeline_class="OmniGenPipeline", encode_prompts=encode_prompts, encode_media=encode_media)


def pipeline_loads() -> bool:
    """OmniGenPipeline's processor builds torchvision image transforms when it is made, even for text prompts."""
    return importlib.util.find_spec("torchvision") is not None


def load_data(config: TrainConfig, device: torch.device, log):
    if not is_encoded_folder(Path(config.instance_data_dir).expanduser()) and not pipeline_loads():
        raise ValueError(
            "encoding images for OmniGen needs OmniGenPipeline, which needs torchvision: install the torchvision "
            "that matches your torch (pip install torchvision), or set instance_data_dir to an already encoded folder"
        )
    return encode_folder(SPEC, "image", config, device, log)


FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=load_data, sample=sample,
    # the attention projections of every layer
    lora_target_modules=("to_q", "to_k", "to_v", "to_out.0"),
)
