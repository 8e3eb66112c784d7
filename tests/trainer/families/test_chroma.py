"""Chroma: a tiny pipeline built offline; double blocks then single blocks, text sliced off the joint stream."""

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.flow_checks import one_step_from_noise
from tests.utils.tiny_pipelines import image_folder, t5_text_encoder, t5_tokenizer, vae
from trainer.families import FAMILIES, model_depth

TEXT = 7  # tokens of the cached prompts in the encoded-dataset tests


def tiny_transformer():
    from diffusers import ChromaTransformer2DModel

    torch.manual_seed(0)
    return ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    )


@pytest.fixture(scope="module")
def chroma_dir(tmp_path_factory):
    from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

    directory = tmp_path_factory.mktemp("chroma") / "pipeline"
    ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae(latent_channels=4, shift_factor=0.06, scaling_factor=1.5),
        text_encoder=t5_text_encoder(), tokenizer=t5_tokenizer(), transformer=tiny_transformer(),
    ).save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    mask = torch.zeros(n, TEXT, dtype=torch.bool)
    mask[:, :3] = True  # a prompt of two tokens and its first padding token
    return write_encoded_dataset(folder, torch.randn(n, 4, 8, 8),
                                 {"prompt_embeds": torch.randn(n, TEXT, 32), "attention_mask": mask})


def test_depth_counts_double_then_single_blocks(chroma_dir):
    assert model_depth(FAMILIES["chroma"], str(chroma_dir)) == 4


def test_layersync_compares_image_tokens_across_the_two_block_lists(chroma_dir, tmp_path):
    # block 2 (double) → block 4 (single, whose output starts with the 7 text tokens)
    data = encoded(tmp_path / "encoded")
    shapes = check_layersync_gradients("chroma", chroma_dir, data, tmp_path, student=2, teacher=4)
    assert shapes["student"] == shapes["teacher"] == (2, 16, 32)  # 8×8 latents → 16 packed image tokens


def test_padding_the_prompt_does_not_change_the_prediction():
    """The boolean mask drops the padding: more masked text tokens leave the image prediction as it was."""
    from trainer.models.chroma import predict

    model = tiny_transformer().eval()
    x, sigma = torch.randn(1, 4, 8, 8), torch.tensor([0.5])
    text, mask = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    padded = torch.cat([text, torch.randn(1, 4, 32)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        short = predict(model, x, sigma, {"prompt_embeds": text, "attention_mask": mask})
        long = predict(model, x, sigma, {"prompt_embeds": padded, "attention_mask": padded_mask})
    assert short.shape == x.shape and torch.isfinite(long).all()
    assert torch.allclose(short, long, atol=1e-5)


def test_predict_gives_the_velocity_the_pipeline_integrates(chroma_dir):
    from diffusers import ChromaPipeline

    from trainer.models.chroma import predict
    from trainer.models.flux import pack

    pipe = ChromaPipeline.from_pretrained(chroma_dir, local_files_only=True)
    pipe.transformer.eval()
    noise = torch.randn(2, 4, 8, 8)
    mask = torch.arange(TEXT)[None] < torch.tensor([[3], [5]])  # prompts of 3 and 5 tokens
    cond = {"prompt_embeds": torch.randn(2, TEXT, 32), "attention_mask": mask}
    out = one_step_from_noise(pipe, pack(noise), prompt_embeds=cond["prompt_embeds"], guidance_scale=1.0,
                              prompt_attention_mask=cond["attention_mask"], height=16, width=16)
    with torch.no_grad():
        velocity = predict(pipe.transformer, noise, torch.ones(2), cond)
    assert torch.allclose(pack(velocity), pack(noise) - out, atol=1e-4)


def test_lora_with_gradient_checkpointing_trains(chroma_dir, tmp_path):
    events = train_few_steps("chroma", chroma_dir, encoded(tmp_path / "encoded"), tmp_path / "run", 1, 3,
                             model_type="lora", lora_rank=4, gradient_checkpointing=True)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_the_whole_way_from_an_image_folder_to_a_sample(chroma_dir, tmp_path):
    images = image_folder(tmp_path / "images", n=3)
    events = train_few_steps("chroma", chroma_dir, images, tmp_path / "run", 2, 4, cache_dir=str(tmp_path / "cache"),
                             resolution=16, max_train_steps=2, validation_steps=2, validation_num_inference_steps=2)
    samples = [e for e in events if e["event"] == "sample"]
    assert samples and (tmp_path / "run" / samples[-1]["path"]).stat().st_size > 0
