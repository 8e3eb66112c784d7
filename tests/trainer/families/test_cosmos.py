"""Cosmos-Predict2: a tiny Video2World pipeline built offline, the whole way from GIF clips to a video
sample; Cosmos 1.0 (EDM) and padding-mask models without torchvision are clear errors."""

import json

import pytest
import torch

from tests.trainer.families.test_wan import gif_folder
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import t5_text_encoder, t5_tokenizer
from trainer.config import validate_config
from trainer.families import FAMILIES, model_depth


def cosmos_transformer(**overrides):
    from diffusers import CosmosTransformer3DModel

    torch.manual_seed(0)
    config = {"in_channels": 17, "out_channels": 16, "num_attention_heads": 2, "attention_head_dim": 16,
              "num_layers": 4, "mlp_ratio": 2, "text_embed_dim": 32, "adaln_lora_dim": 4, "max_size": (8, 32, 32),
              "patch_size": (1, 2, 2),
              "concat_padding_mask": False}  # real checkpoints concatenate it, which needs torchvision
    return CosmosTransformer3DModel(**{**config, **overrides})


@pytest.fixture(scope="module")
def cosmos_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan, Cosmos2VideoToWorldPipeline, FlowMatchEulerDiscreteScheduler

    from trainer.models.cosmos import NoSafetyChecker

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    pipe = Cosmos2VideoToWorldPipeline(
        text_encoder=t5_text_encoder(), tokenizer=t5_tokenizer(), transformer=cosmos_transformer(), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), safety_checker=NoSafetyChecker(),
    )
    directory = tmp_path_factory.mktemp("cosmos") / "pipeline"
    pipe.save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    """Normalised Wan-VAE latents (C, T', H', W'); T5 embeddings zeroed after each prompt, as the pipeline gives."""
    torch.manual_seed(1)
    return write_encoded_dataset(folder, torch.randn(n, 16, 2, 4, 4), {"prompt_embeds": torch.randn(n, 512, 32)})


def test_depth_is_the_number_of_blocks(cosmos_dir):
    assert model_depth(FAMILIES["cosmos"], str(cosmos_dir)) == 4


def test_layersync_reaches_the_student_and_compares_frames_of_patches(cosmos_dir, tmp_path):
    result = check_layersync_gradients("cosmos", cosmos_dir, encoded(tmp_path / "data"), tmp_path, student=2, teacher=4)
    assert result["student"] == result["teacher"] == (2, 2, 4, 32)


def test_the_whole_way_gif_clips_to_training_to_a_video_sample(cosmos_dir, tmp_path):
    common = {"cache_dir": str(tmp_path / "cache"), "resolution": 32, "num_frames": 5, "validation_steps": 2,
              "max_train_steps": 2, "validation_num_inference_steps": 2, "validation_guidance": 2.0,
              "gradient_checkpointing": True}
    events = train_few_steps("cosmos", cosmos_dir, gif_folder(tmp_path / "clips"), tmp_path / "run", 1, 4, **common)
    assert any("encoding 3 video file(s)" in e.get("message", "") for e in events)
    sample = [e for e in events if e["event"] == "sample"][-1]
    assert (tmp_path / "run" / sample["path"]).stat().st_size > 0


def test_a_cosmos_1_edm_model_is_refused(tmp_path):
    from trainer.models import cosmos

    cosmos_transformer().save_pretrained(tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "CosmosTextToWorldPipeline"}))
    config = validate_config({"model_family": "cosmos", "pretrained_model_name_or_path": str(tmp_path),
                              "instance_data_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="is a Cosmos 1.0 model .* EDM preconditioning"):
        cosmos.load_model(config)


def test_a_padding_mask_model_trains_where_torchvision_is_installed(tmp_path):
    pytest.importorskip("torchvision")  # real checkpoints concatenate the padding mask
    cosmos_transformer(concat_padding_mask=True).save_pretrained(tmp_path / "transformer")
    train_few_steps("cosmos", tmp_path / "transformer", encoded(tmp_path / "data"), tmp_path / "run", 1, 3)


def test_a_padding_mask_model_without_torchvision_says_what_to_install(tmp_path):
    from diffusers.utils import is_torchvision_available

    from trainer.models import cosmos

    if is_torchvision_available():
        pytest.skip("torchvision is installed: the padding mask works")
    cosmos_transformer(concat_padding_mask=True).save_pretrained(tmp_path)
    config = validate_config({"model_family": "cosmos", "pretrained_model_name_or_path": str(tmp_path),
                              "instance_data_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="pip install torchvision"):
        cosmos.load_model(config)
