"""Z-Image: only the main layers are numbered; the image tokens lead the unified sequence; per-example captions."""

from types import SimpleNamespace

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from tests.utils.tiny_pipelines import vae
from trainer.families import FAMILIES, model_depth
from trainer.models.z_image import blocks, predict

TEXT = 10  # the cached captions' padded length in these tests


def tiny_transformer():
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(0)
    return ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=3, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[128, 16, 16],
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("z_image") / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def captions(lengths):
    mask = torch.arange(TEXT)[None] < torch.tensor(lengths)[:, None]
    return {"prompt_embeds": torch.randn(len(lengths), TEXT, 16) * mask[..., None], "prompt_embeds_mask": mask}


def encoded(folder):
    # the empty prompt is a few chat-template tokens, never an empty caption (the model cannot take one)
    return write_encoded_dataset(folder, torch.randn(4, 4, 8, 8), captions([3, 7, 10, 5]), null_cond=captions([4]))


def test_depth_counts_the_main_layers_not_the_refiners(model_dir):
    model = tiny_transformer()
    assert model_depth(FAMILIES["z_image"], str(model_dir)) == len(blocks(model)) == 3
    assert len(model.noise_refiner) == len(model.context_refiner) == 1


def test_layersync_compares_the_image_tokens(model_dir, tmp_path):
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("z_image", model_dir, data, tmp_path, student=1, teacher=3)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)  # 8×8 latents in 2×2 patches, not the 32-padded run


def test_captions_of_different_lengths_in_one_batch():
    model = tiny_transformer().eval()
    x, sigma, cond = torch.randn(2, 4, 8, 8), torch.tensor([0.1, 0.9]), captions([2, 9])
    with torch.no_grad():
        both = predict(model, x, sigma, cond)
        second = predict(model, x[1:], sigma[1:], {key: value[1:] for key, value in cond.items()})
    assert both.shape == x.shape and torch.allclose(both[1:], second, atol=1e-5)


def test_lora_and_gradient_checkpointing_train(model_dir, tmp_path):
    train_few_steps("z_image", model_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 1, 2,
                    model_type="lora", lora_rank=4, gradient_checkpointing=True)


def tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

    return ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(shift_factor=0.1), text_encoder=None,
                          tokenizer=None, transformer=tiny_transformer().eval())


def test_predict_gives_the_velocity_the_pipeline_integrates():
    """The pipeline passes 1 − sigma and negates the output; predict must match it."""
    pipe, noise, cond = tiny_pipeline(), torch.randn(2, 4, 8, 8), captions([3, 6])
    caption_list = [embeds[keep] for embeds, keep in zip(cond["prompt_embeds"], cond["prompt_embeds_mask"], strict=True)]
    out = one_step_from_noise(pipe, noise, prompt_embeds=caption_list, guidance_scale=0.0, height=16, width=16)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), cond)
    assert torch.allclose(velocity, noise - out, atol=1e-4)


def test_samples_from_cached_captions_without_the_text_encoder():
    from trainer.models.z_image import generate

    pipe = tiny_pipeline()
    config = SimpleNamespace(resolution=16, validation_num_inference_steps=2, validation_guidance=3.0)
    images = generate(pipe, captions([3, 6]), captions([2]), config, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
