"""LTX-Video: patchified tokens built inside predict; a tiny transformer trained from an encoded dataset."""

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models.ltxvideo import pack, unpack


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_layers=4,
                                       num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                       caption_channels=32)
    directory = tmp_path_factory.mktemp("ltxvideo") / "transformer"
    model.save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    """Normalised latents (C, T', H', W'); T5 embeddings with their boolean mask, as LTXPipeline.encode_prompt gives."""
    torch.manual_seed(1)
    lengths = torch.tensor([3, 5, 7, 9, 11, 2][:n] + [1])
    cond = {"prompt_embeds": torch.randn(n + 1, 10, 32), "prompt_attention_mask": torch.arange(10) < lengths[:, None]}
    return write_encoded_dataset(folder, torch.randn(n, 8, 2, 4, 4), {k: v[:n] for k, v in cond.items()},
                                 null_cond={k: v[n:] for k, v in cond.items()})


@pytest.mark.parametrize("p, p_t", [(1, 1), (2, 1), (2, 2)])
def test_pack_and_unpack_are_the_pipelines(p, p_t):
    from diffusers import LTXPipeline

    latents = torch.randn(2, 3, 4, 4, 6)
    tokens = pack(latents, p, p_t)
    assert torch.equal(tokens, LTXPipeline._pack_latents(latents, p, p_t))
    grid = (4 // p_t, 4 // p, 6 // p)
    assert torch.equal(unpack(tokens, *grid, p, p_t), latents)


def test_depth_is_the_number_of_blocks(model_dir):
    assert model_depth(FAMILIES["ltxvideo"], str(model_dir)) == 4


def test_layersync_reaches_the_student_and_compares_frames_of_patches(model_dir, tmp_path):
    # resolution: the config asks for a multiple of 32 even for encoded data
    data = encoded(tmp_path / "data")
    result = check_layersync_gradients("ltxvideo", model_dir, data, tmp_path, student=1, teacher=3, resolution=32)
    assert result["student"] == result["teacher"] == (2, 2, 16, 32)  # 2 latent frames of 4×4 tokens


def test_lora_trains(model_dir, tmp_path):
    events = train_few_steps("ltxvideo", model_dir, encoded(tmp_path / "data"), tmp_path / "run", 2, 4,
                             model_type="lora", lora_rank=4, resolution=32)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)


def test_the_default_five_frames_do_not_fit_the_vae_and_are_refused_at_submit_time(model_dir, tmp_path):
    (tmp_path / "clips").mkdir()
    with pytest.raises(ConfigError) as caught:
        validate_config({"model_family": "ltxvideo", "pretrained_model_name_or_path": str(model_dir),
                         "instance_data_dir": str(tmp_path / "clips"), "max_train_steps": 1, "num_frames": 5,
                         "resolution": 32})
    assert caught.value.errors == [("num_frames", "num_frames 5 does not fit the VAE of LTX-Video, which needs 8k+1 frames: use 1 or 9")]
