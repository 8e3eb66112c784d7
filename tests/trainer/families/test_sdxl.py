"""SDXL: the UNet's transformer blocks numbered as the registry counts them, pairs held to one UNet level,
predict checked against what StableDiffusionXLPipeline gives its UNet, and a tiny pipeline the whole way."""

import json

import pytest
import torch

from tests.trainer.families.tiny_unet import POOLED, TEXT_DIM, tiny_unet
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import clip_text_encoder, clip_tokenizer, image_folder, vae
from trainer.config import ConfigError, validate_config
from trainer.families import unet_blocks, unet_transformer_blocks
from trainer.models import sdxl

DEPTH, LEVEL_0 = 11, [1, 10, 11]  # the tiny UNet's blocks, and those at the full latent resolution


def sdxl_pipeline(directory):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        unet=tiny_unet(), vae=vae(latent_channels=4, scaling_factor=0.13025),
        scheduler=EulerDiscreteScheduler(**sdxl.STANDARD_SCHEDULER, timestep_spacing="leading", steps_offset=1),
        text_encoder=clip_text_encoder(seed=0), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_encoder(with_projection=True, seed=1), tokenizer_2=clip_tokenizer(),
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Latents as encode_media stores them (B, 4, H/2, W/2) and the conditions as encode_prompts makes them."""
    torch.manual_seed(1)
    cond = {"prompt_embeds": torch.randn(4, 77, TEXT_DIM), "pooled_prompt_embeds": torch.randn(4, POOLED),
            "add_time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).repeat(4, 1)}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="sdxl")


def hidden_shapes(model) -> list[tuple]:
    """Every block's captured (B, tokens, width), in numbering order, from one forward."""
    blocks, shapes = sdxl.blocks(model), {}

    def keep(index):
        def hook(module, args, output):
            shapes.setdefault(index, tuple(output.shape))

        return hook

    handles = [block.module.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    cond = {"prompt_embeds": torch.randn(1, 5, TEXT_DIM), "pooled_prompt_embeds": torch.randn(1, POOLED),
            "add_time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]])}
    with torch.no_grad():
        sdxl.predict(model, torch.randn(1, 4, 8, 8), torch.tensor([10]), cond)
    for handle in handles:
        handle.remove()
    return [shapes[i] for i in range(len(blocks))]


@pytest.mark.parametrize("overrides", [
    {},
    # per-layer depths given as lists, so the up blocks need their own (an asymmetrical UNet)
    {"layers_per_block": 2, "transformer_layers_per_block": [1, [2, 1]],
     "reverse_transformer_layers_per_block": [[1, 2, 1], [1, 1, 1]]},
])
def test_the_registry_counts_and_places_the_blocks_the_unet_runs(tmp_path, overrides):
    model = tiny_unet(**overrides)
    model.save_pretrained(tmp_path / "unet")
    config = json.loads((tmp_path / "unet" / "config.json").read_text())  # what the server reads, torch-free
    shapes = hidden_shapes(model)
    assert unet_transformer_blocks(config) == len(sdxl.blocks(model)) == len(shapes)
    widths, sides = config["block_out_channels"], [8, 4]
    assert shapes == [(1, sides[level] ** 2, widths[level]) for _, level in unet_blocks(config)]
    if not overrides:
        assert [i + 1 for i, (_, level) in enumerate(unet_blocks(config)) if level == 0] == LEVEL_0


def test_predict_gives_the_unet_what_the_pipeline_gives_it(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, local_files_only=True)
    calls = []
    pipe.unet.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs, out[0])), with_kwargs=True)
    with torch.no_grad():
        pipe(prompt="a red square", height=16, width=16, num_inference_steps=2, guidance_scale=1.0,
             output_type="latent")
        (x, t), kwargs, expected = calls[1]
        config = validate_config({"model_family": "sdxl", "pretrained_model_name_or_path": str(sdxl_dir),
                                  "instance_data_dir": str(sdxl_dir), "resolution": 16})
        cond = sdxl.encode_prompts(pipe, ["a red square"], config)
        torch.testing.assert_close(cond["add_time_ids"], kwargs["added_cond_kwargs"]["time_ids"])
        got = sdxl.predict(pipe.unet, x, t.expand(1), cond)
    torch.testing.assert_close(got, expected)


def test_layersync_pairs_a_down_block_with_an_up_block_of_its_level(sdxl_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("sdxl", sdxl_dir, encoded, tmp_path, student=2, teacher=8)
    assert shapes["depth"] == DEPTH
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)  # level 1: 4×4 tokens, 32 wide


def test_a_pair_from_two_levels_is_refused_at_submit_time_with_both_shapes(sdxl_dir, encoded):
    with pytest.raises(ConfigError) as caught:
        validate_config({"model_family": "sdxl", "pretrained_model_name_or_path": str(sdxl_dir),
                         "instance_data_dir": str(encoded), "resolution": 64, "layersync_enabled": True,
                         "layersync_student_block": 1, "layersync_teacher_block": 5})
    (key, message), = caught.value.errors
    assert key == "layersync_teacher_block"
    assert "student block 1 (down block 0) gives (B, 64, 16) hidden states" in message
    assert "teacher block 5 (mid block) gives (B, 16, 32) hidden states" in message
    assert message.endswith("choose a teacher among blocks 10–11")


def test_a_directory_that_holds_no_unet_is_refused_at_submit_time(encoded, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel", "num_layers": 2}))
    with pytest.raises(ConfigError, match="does not look like a Stable Diffusion XL model; check model_family"):
        validate_config({"model_family": "sdxl", "pretrained_model_name_or_path": str(tmp_path),
                         "instance_data_dir": str(encoded), "layersync_enabled": True, "layersync_student_block": 1})


def test_training_full_and_lora_with_checkpointing_from_an_encoded_folder(sdxl_dir, encoded, tmp_path):
    train_few_steps("sdxl", sdxl_dir / "unet", encoded, tmp_path / "full", 10, 11)
    events = train_few_steps("sdxl", sdxl_dir, encoded, tmp_path / "lora", 3, 9, model_type="lora", lora_rank=4,
                             gradient_checkpointing=True)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_a_bare_unet_folder_trains_with_the_standard_sdxl_schedule(sdxl_dir, tmp_path):
    import shutil

    bare = shutil.copytree(sdxl_dir / "unet", tmp_path / "unet")
    for path, scheduler in [(bare, sdxl.STANDARD_SCHEDULER["beta_end"]), (sdxl_dir / "unet", 0.012), (sdxl_dir, 0.012)]:
        config = validate_config({"model_family": "sdxl", "pretrained_model_name_or_path": str(path),
                                  "instance_data_dir": str(tmp_path)})
        assert sdxl.scheduler_config(config)["beta_end"] == scheduler
        assert ("_class_name" in sdxl.scheduler_config(config)) == (path != bare)  # the pipeline's own file


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(sdxl_dir, tmp_path):
    images = image_folder(tmp_path / "images", n=3)
    (images / "img_02.txt").unlink()  # an image without a caption trains unconditioned
    common = {"cache_dir": str(tmp_path / "cache"), "resolution": 16, "validation_steps": 2, "max_train_steps": 2,
                  "validation_num_inference_steps": 2}
    events = train_few_steps("sdxl", sdxl_dir, images, tmp_path / "run1", 2, 8, **common)
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and (tmp_path / "run1" / samples[-1]["path"]).stat().st_size > 0
    (folder,) = (tmp_path / "cache" / "sdxl").iterdir()
    from safetensors.torch import load_file

    data = load_file(folder / "data.safetensors")
    assert data["latents"].shape == (3, 4, 8, 8) and data["cond/prompt_embeds"].shape == (3, 77, TEXT_DIM)
    assert data["cond/prompt_embeds"][2].abs().sum() == 0  # force_zeros_for_empty_prompt: "" is zeros
    assert data["null/pooled_prompt_embeds"].abs().sum() == 0
    events = train_few_steps("sdxl", sdxl_dir, images, tmp_path / "run2", 2, 8, **common)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "using the encoded dataset cached in" in logs and "encoding" not in logs
