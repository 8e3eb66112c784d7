"""Flux.2: double then single blocks (text first in the joint stream); patchified, batch-norm normalised latents."""

import json
from types import SimpleNamespace

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from trainer.families import FAMILIES, model_depth
from trainer.models.flux2 import KLEIN_SPEC, SPEC, TRAINING_GUIDANCE, encode_media, pipeline_spec, predict


def tiny_transformer(guidance_embeds=True):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    return Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, timestep_guidance_channels=32, mlp_ratio=2.0, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def tiny_vae():
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4)
    vae.bn.running_mean.normal_()  # statistics that are not the identity, so the normalisation shows
    vae.bn.running_var.uniform_(0.5, 2.0)
    return vae.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("flux2") / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    # 16 channels at 4×4: a 4-channel VAE's 8×8 latents in 2×2 patches
    return write_encoded_dataset(folder, torch.randn(n, 16, 4, 4), {"prompt_embeds": torch.randn(n, 6, 32)})


def test_depth_counts_double_then_single_blocks(model_dir):
    assert model_depth(FAMILIES["flux2"], str(model_dir)) == 4


def test_layersync_compares_image_tokens_across_the_two_block_lists(model_dir, tmp_path):
    # block 2 (double) → block 3 (single, whose output starts with the 6 text tokens)
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("flux2", model_dir, data, tmp_path, student=2, teacher=3)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)


def test_lora_with_gradient_checkpointing_trains(model_dir, tmp_path):
    train_few_steps("flux2", model_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 1, 4,
                    model_type="lora", lora_rank=4, gradient_checkpointing=True)


def test_latents_are_the_pipelines_normalised_patches():
    from diffusers import Flux2Pipeline

    vae = tiny_vae()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    pipe = Flux2Pipeline(scheduler=None, vae=vae, text_encoder=None, tokenizer=None, transformer=None)
    latents = encode_media(pipe, pixels, None)
    assert latents.shape == (2, 16, 4, 4)
    # what the pipeline's decoding undoes: the batch-norm statistics, then the 2×2 patches
    std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps).view(1, -1, 1, 1)
    raw = Flux2Pipeline._unpatchify_latents(latents * std + vae.bn.running_mean.view(1, -1, 1, 1))
    assert torch.allclose(raw, vae.encode(pixels).latent_dist.mode(), atol=1e-4)


def tiny_pipeline(klein: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Pipeline

    pipeline = Flux2KleinPipeline if klein else Flux2Pipeline
    return pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=None, tokenizer=None,
                    transformer=tiny_transformer(guidance_embeds=not klein).eval())


@pytest.mark.parametrize("klein", [False, True])
def test_predict_gives_the_velocity_the_pipeline_integrates(klein):
    pipe, noise, embeds = tiny_pipeline(klein), torch.randn(2, 16, 4, 4), torch.randn(2, 6, 32)
    # dev: the pipeline's guidance scale is the model's guidance input, which training holds at TRAINING_GUIDANCE
    out = one_step_from_noise(pipe, noise, prompt_embeds=embeds, guidance_scale=TRAINING_GUIDANCE, height=16, width=16)
    if klein:  # klein returns the VAE's latents: patchify and normalise them again
        bn = pipe.vae.bn
        std = torch.sqrt(bn.running_var + pipe.vae.config.batch_norm_eps).view(1, -1, 1, 1)
        out = (pipe._patchify_latents(out) - bn.running_mean.view(1, -1, 1, 1)) / std
    else:  # dev returns them packed, (B, H·W, C)
        out = out.transpose(1, 2).reshape(noise.shape)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), {"prompt_embeds": embeds})
    assert torch.allclose(velocity, noise - out, atol=1e-4)


@pytest.mark.parametrize("klein", [False, True])
def test_samples_from_cached_embeddings_without_the_text_encoder(klein):
    spec = KLEIN_SPEC if klein else SPEC
    pipe = tiny_pipeline(klein)
    config = SimpleNamespace(resolution=16, validation_num_inference_steps=2, validation_guidance=2.0)
    images = spec.generate(pipe, {"prompt_embeds": torch.randn(2, 6, 32)}, {"prompt_embeds": torch.randn(1, 6, 32)},
                           config, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1


def test_the_pipeline_directory_picks_dev_or_klein(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2KleinPipeline"}))
    assert pipeline_spec(SimpleNamespace(pretrained_model_name_or_path=str(tmp_path))) is KLEIN_SPEC
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}))
    assert pipeline_spec(SimpleNamespace(pretrained_model_name_or_path=str(tmp_path))) is SPEC
