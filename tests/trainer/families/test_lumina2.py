"""Lumina 2: a tiny pipeline built offline (Gemma 2), predict checked against what Lumina2Pipeline gives its
transformer (1 - sigma in, the negated output out), each sample's image tokens found in the joint sequence
whatever its caption length, and the whole way from an image folder to a sample."""

import pytest
import torch

from tests.trainer.families.pipeline_checks import train_from_an_image_folder_twice, transformer_calls
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import WORDS, vae
from trainer.families import FAMILIES, model_depth
from trainer.models import lumina2

LAYERS, HIDDEN, GEMMA = 4, 16, 8


def gemma_tokenizer():
    from transformers import GemmaTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "▁": 4}
    for piece in [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz<>"):
        vocab.setdefault(piece, len(vocab))
    return GemmaTokenizerFast(vocab=vocab, merges=[], add_bos_token=True)  # <bos>: "" keeps one token


def lumina2_pipeline(directory):
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(0)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=HIDDEN, num_layers=LAYERS, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2), cap_feat_dim=GEMMA,
    )
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=4, hidden_size=GEMMA, intermediate_size=8, num_attention_heads=2, num_hidden_layers=2,
        num_key_value_heads=2, sliding_window=2, vocab_size=64,
    ))
    pipe = Lumina2Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae(latent_channels=4, shift_factor=0.06, scaling_factor=1.5), text_encoder=text_encoder,
        tokenizer=gemma_tokenizer(),
    )
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def lumina2_dir(tmp_path_factory):
    return lumina2_pipeline(tmp_path_factory.mktemp("lumina2") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Gemma states (B, 256, D) and masks whose captions differ in length, as encode_prompts makes them."""
    torch.manual_seed(1)
    mask = torch.zeros(4, lumina2.MAX_SEQUENCE_LENGTH, dtype=torch.long)
    for i, length in enumerate([3, 40, 1, 12]):
        mask[i, :length] = 1
    cond = {"prompt_embeds": torch.randn(4, lumina2.MAX_SEQUENCE_LENGTH, GEMMA), "prompt_attention_mask": mask}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="lumina2")


def test_the_blocks_are_the_joint_layers_counted_from_the_config(lumina2_dir):
    from diffusers import Lumina2Transformer2DModel

    model = Lumina2Transformer2DModel.from_pretrained(lumina2_dir / "transformer")
    assert model_depth(FAMILIES["lumina2"], str(lumina2_dir)) == len(lumina2.blocks(model)) == LAYERS


def test_predict_passes_one_minus_sigma_and_negates_as_the_pipeline_does(lumina2_dir):
    from diffusers import Lumina2Pipeline

    pipe = Lumina2Pipeline.from_pretrained(lumina2_dir, local_files_only=True)
    calls = transformer_calls(pipe, prompt="a red square", height=16, width=16, num_inference_steps=3,
                              guidance_scale=1.0, output_type="latent")
    inputs, expected = calls[1]
    sigma = pipe.scheduler.sigmas[1].expand(1)
    assert 0 < sigma < 1 and torch.allclose(inputs["timestep"], 1 - sigma)  # Lumina's t: 0 is noise
    with torch.no_grad():
        cond = lumina2.encode_prompts(pipe, ["a red square"], None)
        torch.testing.assert_close(cond["prompt_embeds"], inputs["encoder_hidden_states"])
        got = lumina2.predict(pipe.transformer, inputs["hidden_states"], sigma, cond)
    torch.testing.assert_close(got, -expected)  # the pipeline negates before its scheduler step


def test_each_samples_image_tokens_are_found_whatever_its_caption_length(lumina2_dir, encoded):
    from diffusers import Lumina2Transformer2DModel
    from safetensors.torch import load_file

    model = Lumina2Transformer2DModel.from_pretrained(lumina2_dir / "transformer")
    stream = lumina2.blocks(model)[0].stream
    seen = {}
    model.noise_refiner[-1].register_forward_hook(lambda m, a, out: seen.update(image=out))  # image tokens only
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.update(joint=args[0]))  # caption + image + padding
    data = load_file(encoded / "data.safetensors")
    cond = {"prompt_embeds": data["cond/prompt_embeds"], "prompt_attention_mask": data["cond/prompt_attention_mask"]}
    with torch.no_grad():
        lumina2.predict(model, data["latents"], torch.full((4,), 0.5), cond)
    assert seen["joint"].shape == (4, 40 + 16, HIDDEN)  # the longest caption (40) and 16 image tokens
    torch.testing.assert_close(stream(seen["joint"]), seen["image"])


def test_layersync_and_training_with_captions_of_different_lengths(lumina2_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("lumina2", lumina2_dir, encoded, tmp_path, student=1, teacher=LAYERS)
    assert shapes["student"] == shapes["teacher"] == (2, 16, HIDDEN)
    train_few_steps("lumina2", lumina2_dir / "transformer", encoded, tmp_path / "run", 2, 3,
                    gradient_checkpointing=True,                    model_type="lora", lora_rank=4)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(lumina2_dir, tmp_path):
    train_from_an_image_folder_twice("lumina2", lumina2_dir, tmp_path, resolution=16)
