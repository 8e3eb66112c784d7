"""Kandinsky 5 image: the video transformer on single frames, which the reference page says fails."""

import pytest
import torch

from tests.trainer.families.test_kandinsky5_video import kandinsky5_transformer, text_cond
from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.families import FAMILIES, model_depth


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return kandinsky5_transformer(tmp_path_factory.mktemp("kandinsky5_image") / "transformer")


def encoded(folder, n=4):
    cond, null = text_cond(n)
    return write_encoded_dataset(folder, torch.randn(n, 4, 8, 8), cond, null_cond=null)  # image latents (C, H', W')


def test_depth_counts_the_visual_blocks_only(model_dir):
    assert model_depth(FAMILIES["kandinsky5_image"], str(model_dir)) == 4


def test_layersync_compares_the_image_tokens(model_dir, tmp_path):
    data = encoded(tmp_path / "data")
    result = check_layersync_gradients("kandinsky5_image", model_dir, data, tmp_path, student=1, teacher=4)
    assert result["student"] == result["teacher"] == (2, 16, 32)  # 4×4 patches of one frame


def test_lora_trains(model_dir, tmp_path):
    events = train_few_steps("kandinsky5_image", model_dir, encoded(tmp_path / "data"), tmp_path / "run", 2, 4,
                             model_type="lora", lora_rank=4)
    assert any("LoRA rank 4" in e.get("message", "") for e in events)
