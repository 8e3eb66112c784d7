"""Wan: a tiny pipeline directory built offline (Wan VAE, UMT5, tokenizer), the whole way from a folder
of GIF clips to cached latents, training and a video sample."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import t5_tokenizer
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, model_depth

NUM_LAYERS = 4


def tiny_wan_pipeline(directory: Path) -> Path:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])  # 8× spatial, 4× temporal
    text_encoder = UMT5EncoderModel(UMT5Config(d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4, vocab_size=64,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=NUM_LAYERS, rope_max_seq_len=32,
    )
    pipe = WanPipeline(tokenizer=t5_tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(directory)
    return Path(directory)


def gif_folder(folder: Path, n: int = 3, frames: int = 6, size: int = 40) -> Path:
    """``n`` GIF clips of a square sliding right, with .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    for i in range(n):
        name = list(colours)[i % 3]
        clip = []
        for f in range(frames):
            pixels = np.full((size, size, 3), 245, np.uint8)
            pixels[10:22, 4 + 3 * f : 16 + 3 * f] = colours[name]
            clip.append(Image.fromarray(pixels))
        clip[0].save(folder / f"clip_{i}.gif", save_all=True, append_images=clip[1:], duration=100)
        (folder / f"clip_{i}.txt").write_text(f"a {name} square")
    return folder


def encoded(folder: Path, n: int = 4) -> Path:
    """Latents as encode_frames stores them (C, T', H', W'), UMT5 embeddings as encode_prompts does."""
    torch.manual_seed(1)
    return write_encoded_dataset(folder, torch.randn(n, 16, 2, 4, 4), {"prompt_embeds": torch.randn(n, 226, 32)})


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    return tiny_wan_pipeline(tmp_path_factory.mktemp("wan") / "pipeline")


def test_depth_is_the_number_of_blocks(wan_dir):
    assert model_depth(FAMILIES["wan"], str(wan_dir)) == NUM_LAYERS


def test_layersync_reaches_the_student_and_compares_frames_of_patches(wan_dir, tmp_path):
    result = check_layersync_gradients("wan", wan_dir, encoded(tmp_path / "data"), tmp_path, student=2, teacher=4)
    # (B, T', P, D): 2 latent frames of 2×2 patches, 24 channels
    assert result["student"] == result["teacher"] == (2, 2, 4, 24)


def test_lora_with_gradient_checkpointing_trains(wan_dir, tmp_path):
    events = train_few_steps("wan", wan_dir, encoded(tmp_path / "data"), tmp_path / "run", 1, 3,
                             model_type="lora", lora_rank=4, gradient_checkpointing=True)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_the_whole_way_gif_clips_to_cached_latents_to_training_to_a_video_sample(wan_dir, tmp_path):
    clips = gif_folder(tmp_path / "clips")
    cache = tmp_path / "cache"
    common = {"cache_dir": str(cache), "resolution": 32, "num_frames": 5, "validation_steps": 2, "max_train_steps": 2,
              "validation_num_inference_steps": 2, "validation_guidance": 2.0}
    events = train_few_steps("wan", wan_dir, clips, tmp_path / "run1", 1, 4, **common)
    assert any("encoding 3 video file(s)" in e.get("message", "") for e in events)
    (folder,) = (cache / "wan").iterdir()
    captions = json.loads((folder / "manifest.json").read_text())["captions"]
    assert captions == ["a red square", "a blue square", "a green square"]
    sample = [e for e in events if e["event"] == "sample"][-1]
    with Image.open(tmp_path / "run1" / sample["path"]) as grid:  # one row of 5 frames per prompt
        assert grid.size[0] == 5 * grid.size[1] // 3
    events = train_few_steps("wan", wan_dir, clips, tmp_path / "run2", 1, 4, **common)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "using the encoded dataset cached in" in logs and "encoding" not in logs


def test_a_frame_count_the_vae_cannot_take_is_refused_at_submit_time(wan_dir, tmp_path):
    with pytest.raises(ConfigError) as caught:
        validate_config({"model_family": "wan", "pretrained_model_name_or_path": str(wan_dir), "num_frames": 6,
                         "instance_data_dir": str(gif_folder(tmp_path / "clips", n=1)), "max_train_steps": 1,
                         "cache_dir": str(tmp_path / "cache")})
    message = "num_frames 6 does not fit the VAE of Wan (video), which needs 4k+1 frames: use 5 or 9"
    assert caught.value.errors == [("num_frames", message)]


def test_a_model_of_another_family_is_named_in_the_error(tmp_path):
    from trainer.models import wan

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    config = validate_config({"model_family": "wan", "pretrained_model_name_or_path": str(tmp_path),
                              "instance_data_dir": str(tmp_path)})
    expected = "holds a FluxTransformer2DModel, but this model family trains a WanTransformer3DModel"
    with pytest.raises(ValueError, match=expected):
        wan.load_model(config)
