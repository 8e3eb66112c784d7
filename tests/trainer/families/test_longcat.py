"""LongCat Image: double then single blocks, both returning (text, image); the sampler without the text encoder."""

from types import SimpleNamespace

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from tests.utils.tiny_pipelines import vae
from trainer.families import FAMILIES, model_depth


def tiny_transformer():
    from diffusers import LongCatImageTransformer2DModel

    torch.manual_seed(0)
    # 64 input channels: 16 latent channels (the pipeline's fixed count) in 2×2 patches
    return LongCatImageTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("longcat") / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    return write_encoded_dataset(folder, torch.randn(n, 16, 8, 8), {"prompt_embeds": torch.randn(n, 9, 32)})


def test_depth_counts_double_then_single_blocks(model_dir):
    assert model_depth(FAMILIES["longcat"], str(model_dir)) == 4


def test_layersync_compares_image_tokens_across_the_two_block_lists(model_dir, tmp_path):
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("longcat", model_dir, data, tmp_path, student=1, teacher=3)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)


def test_training_steps_complete(model_dir, tmp_path):
    train_few_steps("longcat", model_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 2, 4)


def tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, LongCatImagePipeline

    return LongCatImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(latent_channels=16, shift_factor=0.1, scaling_factor=0.3),
        text_encoder=None, tokenizer=None, text_processor=None, transformer=tiny_transformer().eval(),
    )


def test_predict_gives_the_velocity_the_pipeline_integrates():
    from trainer.models.flux import pack
    from trainer.models.longcat import _pass_embeddings_through, predict

    pipe, noise, embeds = tiny_pipeline(), torch.randn(2, 16, 8, 8), torch.randn(2, 9, 32)
    _pass_embeddings_through(pipe)  # as the sampler does: the pipeline cannot take embeddings alone
    out = one_step_from_noise(pipe, pack(noise), prompt_embeds=embeds, guidance_scale=1.0, height=16, width=16,
                              enable_prompt_rewrite=False)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), {"prompt_embeds": embeds})
    assert torch.allclose(pack(velocity), pack(noise) - out, atol=1e-4)


def test_samples_from_cached_embeddings_without_the_text_encoder():
    from trainer.models.longcat import generate

    pipe = tiny_pipeline()
    config = SimpleNamespace(resolution=16, validation_num_inference_steps=2, validation_guidance=2.0)
    images = generate(pipe, {"prompt_embeds": torch.randn(2, 9, 32)}, {"prompt_embeds": torch.randn(1, 9, 32)},
                      config, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1


def test_a_model_of_another_family_is_named_in_the_error(tmp_path):
    from diffusers import ChromaTransformer2DModel

    from trainer.models.longcat import load_model

    ChromaTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=1,
                             joint_attention_dim=8, axes_dims_rope=(2, 2, 4), approximator_num_channels=8,
                             approximator_hidden_dim=8, approximator_layers=1).save_pretrained(tmp_path / "chroma")
    with pytest.raises(ValueError, match="holds a ChromaTransformer2DModel, but this model family trains a "
                                         "LongCatImageTransformer2DModel"):
        load_model(SimpleNamespace(pretrained_model_name_or_path=str(tmp_path / "chroma")))
