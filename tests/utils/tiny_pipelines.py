"""Tiny diffusers pipelines built offline: tokenizers from an in-memory vocabulary, random text
encoders and VAEs from small configs, saved with save_pretrained as real pipeline directories."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = ["a", "photo", "of", "red", "blue", "green", "square", "circle", "cat", "dog", "on", "the", "grass", "sky"]


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for word in WORDS:
        vocab[f"{word}</w>"] = len(vocab)
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(f"{ch}</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def clip_text_encoder(with_projection: bool = False, hidden_size: int = 32, projection_dim: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden_size, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2, vocab_size=100, projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def t5_tokenizer():
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{w}", -float(i)) for i, w in enumerate(WORDS)]
    pieces += [(ch, -20.0) for ch in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=pieces, extra_ids=0)


def t5_text_encoder(d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4, vocab_size=64,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))


def vae(latent_channels: int = 4, shift_factor: float | None = None, scaling_factor: float = 0.5, seed: int = 0):
    """An AutoencoderKL with a downsampling factor of 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=4,
        sample_size=32, shift_factor=shift_factor, scaling_factor=scaling_factor,
    )


def image_folder(folder: Path, n: int = 4, size: int = 40, broken: int = 0) -> Path:
    """``n`` coloured-shape PNGs with .txt captions (and ``broken`` files that are not images)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for i in range(n):
        name = list(colours)[i % 3]
        pixels = np.full((size, size, 3), 245, np.uint8)
        lo, hi = sorted(rng.integers(4, size - 4, 2))
        pixels[lo : hi + 2, lo : hi + 2] = colours[name]
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")
        (folder / f"img_{i:02d}.txt").write_text(f"a {name} square")
    for i in range(broken):
        (folder / f"broken_{i}.png").write_bytes(b"not an image")
    return folder


def flux_pipeline(directory: Path, num_layers: int = 2, num_single_layers: int = 2, guidance_embeds: bool = False) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=num_layers, num_single_layers=num_single_layers, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(latent_channels=4, shift_factor=0.06, scaling_factor=1.5),
        text_encoder=clip_text_encoder(), tokenizer=clip_tokenizer(), text_encoder_2=t5_text_encoder(),
        tokenizer_2=t5_tokenizer(), transformer=transformer,
    )
    pipe.save_pretrained(directory)
    return Path(directory)
