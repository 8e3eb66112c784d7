"""Qwen Image: one list of dual-stream blocks; padded prompts; the VAE's frame axis; the sampler without Qwen2.5-VL."""

from types import SimpleNamespace

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from trainer.families import FAMILIES, model_depth
from trainer.models.qwen_image import encode_media, predict

TEXT = 12  # the cached prompts' padded length in these tests


def tiny_transformer(**overrides):
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    return QwenImageTransformer2DModel(**{
        "patch_size": 2, "in_channels": 16, "out_channels": 4, "num_layers": 3, "attention_head_dim": 16,
        "num_attention_heads": 2, "joint_attention_dim": 32, "axes_dims_rope": (4, 6, 6), **overrides})


def tiny_vae():
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(0)
    return AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                  latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen") / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def prompt_cond(n, lengths):
    mask = torch.arange(TEXT)[None] < torch.tensor(lengths)[:, None]
    return {"prompt_embeds": torch.randn(n, TEXT, 32) * mask[..., None], "prompt_embeds_mask": mask}


def encoded(folder, n=4):
    return write_encoded_dataset(folder, torch.randn(n, 4, 8, 8), prompt_cond(n, [3, 5, 9, 4][:n]))


def test_depth_and_the_edit_alias(model_dir):
    assert model_depth(FAMILIES["qwen_image"], str(model_dir)) == 3
    from trainer.families import find_family

    assert find_family("qwen_image_edit") is FAMILIES["qwen_image"]


def test_layersync_reaches_the_student_block(model_dir, tmp_path):
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("qwen_image", model_dir, data, tmp_path, student=1, teacher=3)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)


def test_training_steps_complete_with_gradient_checkpointing(model_dir, tmp_path):
    train_few_steps("qwen_image_edit", model_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 1, 3,
                    gradient_checkpointing=True)


def test_the_padding_a_batch_does_not_use_is_trimmed_without_changing_the_prediction():
    model = tiny_transformer().eval()
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8])
    cond = prompt_cond(2, [3, 5])
    with torch.no_grad():
        full = predict(model, x, sigma, cond)
        short = predict(model, x, sigma, {k: v[:, :5] for k, v in cond.items()})
    assert full.shape == x.shape and torch.allclose(full, short, atol=1e-5)


def test_latents_drop_the_frame_axis_and_are_normalised_as_the_pipeline_inverts_them():
    vae = tiny_vae()
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = encode_media(SimpleNamespace(vae=vae), pixels, None)
    raw = vae.encode(pixels[:, :, None]).latent_dist.mode()[:, :, 0]
    mean, std = torch.tensor(vae.config.latents_mean), torch.tensor(vae.config.latents_std)
    assert latents.shape == (2, 4, 8, 8)
    assert torch.allclose(latents * std.view(1, 4, 1, 1) + mean.view(1, 4, 1, 1), raw, atol=1e-5)


def tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(), text_encoder=None,
                             tokenizer=None, transformer=tiny_transformer().eval())


def test_predict_gives_the_velocity_the_pipeline_integrates():
    from trainer.models.flux import pack

    pipe, noise, cond = tiny_pipeline(), torch.randn(2, 4, 8, 8), prompt_cond(2, [3, 5])
    out = one_step_from_noise(pipe, pack(noise), prompt_embeds=cond["prompt_embeds"],
                              prompt_embeds_mask=cond["prompt_embeds_mask"], height=16, width=16)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), cond)
    assert torch.allclose(pack(velocity), pack(noise) - out, atol=1e-4)


def test_samples_from_cached_embeddings_without_the_text_encoder():
    from trainer.models.qwen_image import generate

    pipe = tiny_pipeline()
    config = SimpleNamespace(resolution=16, validation_num_inference_steps=2, validation_guidance=2.0)
    images = generate(pipe, prompt_cond(2, [3, 5]), prompt_cond(1, [2]), config, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1


def test_a_layered_checkpoint_is_refused_with_what_to_use(tmp_path):
    from trainer.models.qwen_image import load_model

    tiny_transformer(use_additional_t_cond=True).save_pretrained(tmp_path / "layered")
    with pytest.raises(ValueError, match="Qwen-Image-Layered transformer"):
        load_model(SimpleNamespace(pretrained_model_name_or_path=str(tmp_path / "layered")))
