"""OmniGen: the image tokens sliced off the end of the joint sequence, the collator's mask and positions rebuilt,
predict and the sampling loop checked against OmniGenPipeline itself, and the whole way on a tiny pipeline."""

import importlib.util
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from tests.trainer.families.pipeline_checks import train_from_an_image_folder_twice, transformer_calls
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import WORDS, image_folder
from trainer.config import validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models import omnigen

LAYERS, HIDDEN = 4, 16
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@contextmanager
def loadable_pipeline():
    """OmniGenPipeline builds torchvision transforms for input images when it is made, and imports its processor
    only where torchvision is installed; text to image never uses them, so where torchvision is missing a
    stand-in lets the pipeline load for these tests."""
    if HAS_TORCHVISION:
        yield
        return
    from diffusers.pipelines.omnigen import pipeline_omnigen, processor_omnigen

    unused = SimpleNamespace(**dict.fromkeys(["Compose", "Lambda", "ToTensor", "Normalize"], lambda *a, **k: None))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processor_omnigen, "transforms", unused, raising=False)
        patch.setattr(pipeline_omnigen, "OmniGenMultiModalProcessor", processor_omnigen.OmniGenMultiModalProcessor,
                      raising=False)
        patch.setattr(omnigen, "pipeline_loads", lambda: True)
        yield


@pytest.fixture
def pipeline_without_torchvision():
    with loadable_pipeline():
        yield


def llama_tokenizer():
    from transformers import LlamaTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for piece in [f"▁{w}" for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz<>|\n"):
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizerFast(vocab=vocab, merges=[])


def omnigen_pipeline(directory):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, OmniGenPipeline, OmniGenTransformer2DModel

    torch.manual_seed(0)
    transformer = OmniGenTransformer2DModel(
        hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=LAYERS,
        pad_token_id=0, vocab_size=64, in_channels=4, time_step_dim=4,
        rope_scaling={"long_factor": [1.0, 2.0], "short_factor": [1.0, 1.5]},
    )
    # the released scheduler: t runs from noise (0) to image (1), one training step
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, invert_sigmas=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(  # OmniGen's collator counts 16 pixels per image token: the VAE must downsample by 8
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
        latent_channels=4, norm_num_groups=1, scaling_factor=0.13025,
    )
    with loadable_pipeline():
        pipe = OmniGenPipeline(transformer=transformer, scheduler=scheduler, vae=vae, tokenizer=llama_tokenizer())
        pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def omnigen_dir(tmp_path_factory):
    return omnigen_pipeline(tmp_path_factory.mktemp("omnigen") / "pipeline")


@pytest.fixture
def encoded(tmp_path):
    """Left-padded prompt ids of different lengths, as encode_prompts makes them."""
    torch.manual_seed(1)
    ids = torch.full((4, omnigen.MAX_TOKENS), 2)
    mask = torch.zeros(4, omnigen.MAX_TOKENS, dtype=torch.long)
    for i, length in enumerate([30, 41, 25, 60]):
        ids[i, -length:] = torch.randint(3, 64, (length,))
        mask[i, -length:] = 1
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), {"input_ids": ids, "text_mask": mask},
                                 family="omnigen")


def test_the_blocks_are_the_layers_counted_from_the_config(omnigen_dir):
    model = omnigen.load_model(SimpleNamespace(pretrained_model_name_or_path=str(omnigen_dir)))
    assert model_depth(FAMILIES["omnigen"], str(omnigen_dir)) == len(omnigen.blocks(model)) == LAYERS


def test_the_mask_and_positions_are_the_collators():
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenCollator

    collator = OmniGenCollator()
    prompts = [{"input_ids": list(range(5, 10)), "pixel_values": None, "image_sizes": None},
               {"input_ids": list(range(5, 14)), "pixel_values": None, "image_sizes": None}]
    ids, positions, mask, *_ = collator.process_mllm_input(prompts, [[32, 32], [32, 32]])  # 4 image tokens each
    got_mask, got_positions = omnigen.attention_inputs((ids != collator.pad_token_id).long(), 4)
    assert torch.equal(got_mask, mask.bool()) and torch.equal(got_positions, positions)


def test_predict_and_sampling_are_the_pipelines(omnigen_dir, pipeline_without_torchvision):
    from diffusers import OmniGenPipeline

    pipe = OmniGenPipeline.from_pretrained(omnigen_dir, local_files_only=True)
    calls = transformer_calls(pipe, prompt="a red square", height=32, width=32, num_inference_steps=3,
                              guidance_scale=1.0, output_type="latent")
    inputs, expected = calls[1]
    t = pipe.scheduler.sigmas[1]  # inverted: 0 is noise
    assert 0 < t < 1 and torch.allclose(inputs["timestep"], t.expand(2))
    cond = omnigen.encode_prompts(pipe, ["a red square"], None)
    null = omnigen.encode_prompts(pipe, [""], None)
    with torch.no_grad():  # row 0 is the prompt (row 1 the pipeline's negative prompt)
        got = omnigen.predict(pipe.transformer, inputs["hidden_states"][:1], (1 - t).expand(1), cond)
    torch.testing.assert_close(got, -expected[:1])
    # the sampling loop, unguided, lands where the pipeline lands from the same noise
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    landed = pipe(prompt="a red square", latents=noise, height=32, width=32, num_inference_steps=3, guidance_scale=1.0,
                  output_type="latent").images
    ours = omnigen.denoise(pipe.transformer, noise, cond, null, 3, 1.0)
    torch.testing.assert_close(ours, landed, rtol=1e-4, atol=1e-4)


def test_layersync_and_training_with_prompts_of_different_lengths(omnigen_dir, encoded, tmp_path):
    shapes = check_layersync_gradients("omnigen", omnigen_dir, encoded, tmp_path, student=1, teacher=LAYERS)
    assert shapes["student"] == shapes["teacher"] == (2, 16, HIDDEN)  # 8×8 latents in 2×2 patches
    train_few_steps("omnigen", omnigen_dir / "transformer", encoded, tmp_path / "run", 2, 3,
                    gradient_checkpointing=True,                    model_type="lora", lora_rank=4)


def test_the_whole_way_image_folder_to_cached_latents_to_training_to_a_sample(omnigen_dir, tmp_path,
                                                                              pipeline_without_torchvision):
    train_from_an_image_folder_twice("omnigen", omnigen_dir, tmp_path, resolution=32)


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: OmniGenPipeline loads")
def test_without_torchvision_an_image_folder_is_a_clear_error(omnigen_dir, tmp_path):
    from trainer.train import train

    config = validate_config({"model_family": "omnigen", "pretrained_model_name_or_path": str(omnigen_dir),
                              "instance_data_dir": str(image_folder(tmp_path / "images", n=1)), "resolution": 32,
                              "output_dir": str(tmp_path / "run"), "max_train_steps": 1,
                              "cache_dir": str(tmp_path / "c")})
    assert train(config, tmp_path / "run") == 1
    assert "needs torchvision: install the torchvision" in (tmp_path / "run" / "events.jsonl").read_text()
