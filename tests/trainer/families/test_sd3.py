"""SD3 / SD3.5: a tiny pipeline directory built offline (two CLIPs and a T5), the whole way from an
image folder to a sample, and predict checked against what the pipeline itself asks of its transformer."""

import pytest
import torch

from tests.trainer.families.pipeline_checks import train_from_an_image_folder_twice, transformer_calls
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import clip_text_encoder, clip_tokenizer, t5_text_encoder, t5_tokenizer, vae
from trainer.families import FAMILIES, model_depth
from trainer.models import sd3

LAYERS, INNER, T5_DIM, POOLED = 4, 16, 96, 64  # pooled: the two CLIP projections (32 each) side by side


def sd3_pipeline(directory):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(  # SD3.5-style: a dual-attention first block and RMS qk-norm
        sample_size=8, patch_size=2, in_channels=4, num_layers=LAYERS, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=T5_DIM, caption_projection_dim=INNER, pooled_projection_dim=POOLED, out_channels=4,
        pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm",
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(latent_channels=4, shift_factor=0.06, scaling_factor=1.5),
        text_encoder=clip_text_encoder(with_projection=True, seed=0), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_encoder(with_projection=True, seed=1), tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_text_encoder(d_model=T5_DIM), tokenizer_3=t5_tokenizer(),
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return sd3_pipeline(tmp_path_factory.mktemp("sd3") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Latents as encode_media stores them (B, 4, H/2, W/2) and the joint CLIP+T5 embeddings (shortened)."""
    torch.manual_seed(1)
    cond = {"prompt_embeds": torch.randn(4, 77 + 8, T5_DIM), "pooled_prompt_embeds": torch.randn(4, POOLED)}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="sd3")


def test_the_blocks_are_the_joint_blocks_counted_from_the_config(sd3_dir):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel.from_pretrained(sd3_dir / "transformer")
    assert model_depth(FAMILIES["sd3"], str(sd3_dir)) == len(sd3.blocks(model)) == LAYERS


def test_predict_gives_the_transformer_what_the_pipeline_gives_it(sd3_dir):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir, local_files_only=True)
    calls = transformer_calls(pipe, prompt="a red square", height=16, width=16, num_inference_steps=2,
                              guidance_scale=1.0, output_type="latent")
    inputs, expected = calls[1]  # the second step: a shifted sigma, not 1
    sigma = pipe.scheduler.sigmas[1].expand(1)
    assert torch.allclose(inputs["timestep"], sigma * 1000)
    with torch.no_grad():
        cond = sd3.encode_prompts(pipe, ["a red square"], None)
        got = sd3.predict(pipe.transformer, inputs["hidden_states"], sigma, cond)
    torch.testing.assert_close(got, expected)


def test_layersync_compares_image_streams_up_to_the_last_block(sd3_dir, encoded, tmp_path):
    # the last joint block returns (None, image): the teacher's stream is still element 1
    shapes = check_layersync_gradients("sd3", sd3_dir, encoded, tmp_path, student=1, teacher=LAYERS)
    assert shapes["student"] == shapes["teacher"] == (2, 16, INNER)  # 8×8 latents in 2×2 patches


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(sd3_dir, tmp_path):
    train_from_an_image_folder_twice("sd3", sd3_dir, tmp_path, resolution=16)


def test_lora_on_both_streams_with_gradient_checkpointing(sd3_dir, encoded, tmp_path):
    events = train_few_steps("sd3", sd3_dir, encoded, tmp_path / "run", 2, 4, model_type="lora", lora_rank=4,
                             gradient_checkpointing=True)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)
    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "run" / "checkpoints" / "step_0000003" / "pytorch_lora_weights.safetensors")
    assert any(".add_q_proj." in key for key in adapter) and any(".attn2.to_q." in key for key in adapter)
