"""HiDream: double blocks (image, text), then single blocks [image, text]; T5, Llama and pooled CLIP condition it."""

from types import SimpleNamespace

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from tests.utils.tiny_pipelines import vae
from trainer.families import FAMILIES, model_depth
from trainer.models.hidream import predict

LLAMA_LAYERS = 2  # hidden layers of the (imagined) Llama whose states are cached


def tiny_transformer(**overrides):
    from diffusers import HiDreamImageTransformer2DModel

    torch.manual_seed(0)
    return HiDreamImageTransformer2DModel(**{
        "patch_size": 2, "in_channels": 4, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 16,
        "num_attention_heads": 2, "caption_channels": [24, 16], "text_emb_dim": 20, "num_routed_experts": 2,
        "num_activated_experts": 1, "axes_dims_rope": (8, 4, 4), "max_resolution": (8, 8), "llama_layers": [0, 1, 1, 0],
        **overrides})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hidream") / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def cond(n):
    return {"prompt_embeds_t5": torch.randn(n, 6, 24), "prompt_embeds_llama3": torch.randn(n, LLAMA_LAYERS, 6, 16),
            "pooled_prompt_embeds": torch.randn(n, 20)}


def encoded(folder, n=4):
    return write_encoded_dataset(folder, torch.randn(n, 4, 8, 8), cond(n))


def test_depth_counts_double_then_single_blocks(model_dir):
    assert model_depth(FAMILIES["hidream"], str(model_dir)) == 4


def test_layersync_compares_image_tokens_across_the_two_block_lists(model_dir, tmp_path):
    # block 1 (double, image first in its tuple) → block 4 (single, image tokens first in the joint sequence)
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("hidream", model_dir, data, tmp_path, student=1, teacher=4)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)  # 8×8 latents in 2×2 patches


def test_lora_training_steps_complete(model_dir, tmp_path):
    events = train_few_steps("hidream", model_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 2, 3,
                             model_type="lora", lora_rank=4)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_training_and_inference_layouts_give_the_same_prediction():
    """The model returns its training output still patchified; predict lays it out as in inference."""
    model = tiny_transformer(num_routed_experts=0)  # the experts route differently in training and inference
    x, sigma, c = torch.randn(2, 4, 8, 8), torch.tensor([0.2, 0.7]), cond(2)
    with torch.no_grad():
        trained = predict(model.train(), x, sigma, c)
        inferred = predict(model.eval(), x, sigma, c)
    assert trained.shape == x.shape and torch.allclose(trained, inferred, atol=1e-5)


def tiny_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline

    none = {f"{kind}{suffix}": None for suffix in ("", "_2", "_3", "_4") for kind in ("text_encoder", "tokenizer")}
    return HiDreamImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(shift_factor=0.1),
                                transformer=tiny_transformer().eval(), **none)  # validate() samples in eval mode


def test_predict_gives_the_velocity_the_pipeline_integrates():
    """The pipeline passes sigma · 1000 and negates the output; predict must match it."""
    pipe, noise, c = tiny_pipeline(), torch.randn(2, 4, 8, 8), cond(2)
    pipe.default_sample_size = 8  # the pipeline's target area: 16×16 pixels
    out = one_step_from_noise(pipe, noise, prompt_embeds_t5=c["prompt_embeds_t5"], guidance_scale=1.0,
                              prompt_embeds_llama3=c["prompt_embeds_llama3"].transpose(0, 1),
                              pooled_prompt_embeds=c["pooled_prompt_embeds"], height=16, width=16)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), c)
    assert torch.allclose(velocity, noise - out, atol=1e-4)


def test_samples_from_cached_embeddings_without_the_text_encoders():
    from trainer.models.hidream import generate

    pipe = tiny_pipeline()
    config = SimpleNamespace(resolution=16, validation_num_inference_steps=2, validation_guidance=2.0)
    images = generate(pipe, cond(2), cond(1), config, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
