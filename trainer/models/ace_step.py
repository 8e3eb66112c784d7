"""ACE-Step 1.5 (music): a 1D DiT over Oobleck VAE latents, cross-attending to the condition encoder's
packed text + lyric + timbre sequence; flow matching with sigma in [0, 1] given to the model as is.

Numbering: the DiT layers 1..num_hidden_layers. Each returns only the audio tokens (B, T/patch, D):
the text reaches them through cross-attention, so nothing is sliced off.

Latents are stored as the VAE makes them, (B, 64, T); the model takes (B, T, 64) plus context
latents (the source latents, silence for text-to-music, and a chunk mask of ones), built in predict.
"""

import itertools
import math

import torch
import torch.nn.functional as F
from diffusers import AceStepTransformer1DModel

from trainer.capture import Block, tensor_output
from trainer.config import TrainConfig
from trainer.encode import PipelineSpec, pipeline_data, pipeline_sampler
from trainer.models import FamilyImplementation
from trainer.models.loading import load_component

SAMPLE_RATE = 48000  # ACE-Step 1.5's VAE
MAX_TEXT_TOKENS = 256  # the pipeline's max_text_length: every packed condition is padded to fit it
SHIFT = 3.0  # the pipeline's default timestep shift for sampling


def load_model(config: TrainConfig) -> AceStepTransformer1DModel:
    return load_component(AceStepTransformer1DModel, config.pretrained_model_name_or_path)


def blocks(model: AceStepTransformer1DModel) -> list[Block]:
    return [Block(layer, tensor_output) for layer in model.layers]


def predict(model, x_t: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
    frames = x_t.shape[-1]
    latents = x_t.transpose(1, 2)  # (B, T, C), the model's layout
    src = cond["src_latents"][:, :frames].to(latents.dtype)
    context = torch.cat([src, torch.ones_like(latents)], dim=-1)  # source latents, then a chunk mask of ones
    # the DiT has no cross-attention mask: keep the batch's longest condition, as the pipeline's padding would
    length = max(1, int(cond["encoder_attention_mask"].sum(1).max()))
    encoder_states = cond["encoder_hidden_states"][:, :length].to(latents.dtype)
    # the pipeline passes t = sigma and r = t; the model's time embedding scales by 1000 itself
    out = model(hidden_states=latents, timestep=sigma, timestep_r=sigma, encoder_hidden_states=encoder_states,
                context_latents=context, return_dict=False)[0]
    return out.transpose(1, 2)


def _silence(pipe, frames: int, n: int) -> torch.Tensor:
    """The pipeline's source latents for text-to-music: the condition encoder's silence, tiled to ``frames``."""
    silence = pipe.condition_encoder.silence_latent
    return silence.repeat(1, math.ceil(frames / silence.shape[1]), 1)[:, :frames].expand(n, -1, -1)


def encode_prompts(pipe, prompts: list[str], config: TrainConfig) -> dict[str, torch.Tensor]:
    """One prompt at a time, as the pipeline encodes a single prompt (no lyrics: the caption is the prompt),
    padded to one length so every example stacks. An empty caption is the learned null condition, the
    one the pipeline's guidance uses (encoding "" would be out of distribution)."""
    device, encoder = pipe.device, pipe.condition_encoder
    frames = math.ceil(config.audio_duration * pipe.latents_per_second)
    timbre = _silence(pipe, math.ceil(30 * pipe.latents_per_second), 1)  # no reference audio, as the pipeline
    states, masks = [], []
    for prompt in prompts:
        text, text_mask, lyric, lyric_mask = pipe.encode_prompt(
            prompt, "", device, audio_duration=config.audio_duration, max_text_length=MAX_TEXT_TOKENS
        )
        packed, mask = encoder(text, text_mask, lyric, lyric_mask, timbre.to(text.dtype),
                               torch.zeros(1, dtype=torch.long, device=device))
        mask = mask.long()
        length = lyric.shape[1] + 1 + MAX_TEXT_TOKENS  # lyric tokens, one timbre token, the longest text
        packed, mask = F.pad(packed, (0, 0, 0, length - packed.shape[1])), F.pad(mask, (0, length - mask.shape[1]))
        if not prompt:  # null everywhere; no valid tokens, so predict trims it to the length of the rows beside it
            packed, mask = encoder.null_condition_emb.to(packed.dtype).expand_as(packed), torch.zeros_like(mask)
        states.append(packed)
        masks.append(mask)
    return {
        "encoder_hidden_states": torch.cat(states), "encoder_attention_mask": torch.cat(masks),
        "src_latents": _silence(pipe, frames, len(prompts)).to(device),
    }


def encode_media(pipe, audio: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    rate = pipe.vae.config.sampling_rate
    if rate != SAMPLE_RATE:
        raise ValueError(f"this pipeline's VAE works at {rate} Hz, not ACE-Step 1.5's {SAMPLE_RATE} Hz: "
                         "use an ACE-Step 1.5 pipeline directory")
    # (B, 64, T): the pipeline uses the VAE's latents unscaled (it decodes them as they are)
    return pipe.vae.encode(audio.to(pipe.vae.dtype)).latent_dist.sample()


@torch.no_grad()
def generate(pipe, prompt_cond: dict, null_cond: dict, config: TrainConfig, generator) -> torch.Tensor:
    """The pipeline's text-to-music loop on the encoded conditions: shifted sigmas, Euler steps, APG
    guidance for base models (none for turbo ones), the VAE, and its -1 dBFS peak normalisation."""
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    model = pipe.transformer
    n, frames = len(prompt_cond["src_latents"]), prompt_cond["src_latents"].shape[1]
    x = torch.randn((n, model.config.audio_acoustic_hidden_dim, frames), generator=generator, device=generator.device)
    steps = config.validation_num_inference_steps
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    sigmas = (SHIFT * sigmas / (1 + (SHIFT - 1) * sigmas)).tolist()
    guidance = 1.0 if pipe.is_turbo else config.validation_guidance
    both = {key: torch.cat([value, null_cond[key].expand_as(value)]) for key, value in prompt_cond.items()}
    momentum = MomentumBuffer(momentum=-0.75)
    for sigma, sigma_next in itertools.pairwise(sigmas):
        t = torch.full((n,), sigma, device=x.device)
        if guidance > 1:
            v_cond, v_null = predict(model, torch.cat([x, x]), torch.cat([t, t]), both).float().chunk(2)
            v = normalized_guidance(v_cond, v_null, guidance - 1.0, momentum, eta=0.0, norm_threshold=2.5,
                                    use_original_formulation=True, norm_dim=(2,))  # over time, as the pipeline
        else:
            v = predict(model, x, t, prompt_cond).float()
        x = x + (sigma_next - sigma) * v
    audio = pipe.vae.decode(x.to(pipe.vae.dtype)).sample.float()
    audio = audio / audio.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1.0)  # no clipping
    return audio * (10 ** (-1 / 20) / audio.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6))


SPEC = PipelineSpec(
    pipeline_class="AceStepPipeline", encode_prompts=encode_prompts, encode_media=encode_media, generate=generate,
    text_components=("text_encoder", "tokenizer", "condition_encoder"), audio_sample_rate=SAMPLE_RATE,
)

FAMILY = FamilyImplementation(
    load_model=load_model, blocks=blocks, predict=predict, load_data=pipeline_data(SPEC, "audio"),
    sample=pipeline_sampler(SPEC),
)
