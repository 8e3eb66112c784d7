"""Sana: a tiny pipeline directory built offline (Gemma 2, a DC-AE), predict checked against the
pipeline's own transformer calls, training from encoded datasets and the whole way from an image folder."""

import pytest
import torch

from tests.trainer.families.pipeline_checks import train_from_an_image_folder_twice, transformer_calls
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import WORDS
from trainer.config import validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models import sana

LAYERS, INNER, GEMMA_DIM = 4, 8, 8


def transformer(**overrides):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(0)
    return SanaTransformer2DModel(**dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=LAYERS, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=INNER, caption_channels=GEMMA_DIM,
        sample_size=16, timestep_scale=0.5,  # not 1, so the scaling is checked against the pipeline
    ) | overrides)


def gemma():
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for token in [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz"):
        vocab.setdefault(token, len(vocab))
    torch.manual_seed(0)
    config = Gemma2Config(head_dim=16, hidden_size=GEMMA_DIM, intermediate_size=16, num_attention_heads=2,
                          num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(vocab),
                          attn_implementation="eager")
    return Gemma2Model(config), GemmaTokenizerFast(vocab=vocab, merges=[])


def dc_ae():
    """An AutoencoderDC with a downsampling factor of 2."""
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    return AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41,
    )


def sana_pipeline(directory):
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    text_encoder, tokenizer = gemma()
    SanaPipeline(transformer=transformer(), vae=dc_ae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                 text_encoder=text_encoder, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    return sana_pipeline(tmp_path_factory.mktemp("sana") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Latents as encode_media stores them (B, 4, H/2, W/2), Gemma embeddings and their mask (shortened)."""
    torch.manual_seed(1)
    mask = torch.zeros(4, 12, dtype=torch.long)
    mask[:, :6] = 1
    cond = {"prompt_embeds": torch.randn(4, 12, GEMMA_DIM), "prompt_attention_mask": mask}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="sana")


def test_the_blocks_are_the_linear_attention_blocks_counted_from_the_config(sana_dir):
    model = transformer()
    assert model_depth(FAMILIES["sana"], str(sana_dir)) == len(sana.blocks(model)) == LAYERS


def test_predict_and_the_captions_are_what_the_pipeline_gives_its_transformer(sana_dir):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(sana_dir, local_files_only=True)
    # guidance on: the negative (empty) prompt goes without the complex human instruction, the prompt with it
    calls = transformer_calls(pipe, prompt="a red square", height=32, width=32, num_inference_steps=2,
                              guidance_scale=2.0, use_resolution_binning=False, output_type="latent")
    inputs, expected = calls[1]
    sigma = pipe.scheduler.sigmas[1].expand(2)
    assert torch.allclose(inputs["timestep"], sigma * 1000 * 0.5)
    with torch.no_grad():
        cond = sana.encode_prompts(pipe, ["", "a red square"], None)
        torch.testing.assert_close(cond["prompt_attention_mask"], inputs["encoder_attention_mask"])
        got = sana.predict(pipe.transformer, inputs["hidden_states"], sigma, cond)
    torch.testing.assert_close(got, expected)


def test_layersync_compares_the_image_tokens(sana_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("sana", sana_dir, encoded, tmp_path, student=1, teacher=3, resolution=32)
    assert shapes["student"] == shapes["teacher"] == (2, 64, INNER)  # 8×8 latents, patch size 1


def test_lora_training_from_an_encoded_dataset(sana_dir, encoded, tmp_path):
    events = train_few_steps("sana", sana_dir, encoded, tmp_path / "run", 2, 4, model_type="lora", lora_rank=4,
                             resolution=32)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(sana_dir, tmp_path):
    train_from_an_image_folder_twice("sana", sana_dir, tmp_path, resolution=32)


def test_a_sana_sprint_model_is_refused_with_what_to_use(tmp_path):
    transformer(guidance_embeds=True).save_pretrained(tmp_path / "sprint")
    config = validate_config(dict(model_family="sana", pretrained_model_name_or_path=str(tmp_path / "sprint"),
                                  instance_data_dir=str(tmp_path), resolution=32))
    with pytest.raises(ValueError, match="Sana Sprint model.*use a SanaPipeline model"):
        sana.load_model(config)
