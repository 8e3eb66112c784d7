"""The block map on the demo and on a diffusers family's tiny model."""

import pytest
import torch

from tests.utils.families import write_encoded_dataset
from tests.utils.tiny_pipelines import flux_pipeline
from trainer.config import validate_config
from trainer.families import DEMO_MODEL_CONFIG
from trainer.models.demo_dit import DemoDiT
from trainer.probe import probe

TINY = dict(batches=1, batch_size=4, noise_levels=2)


def check_map(result: dict, depth: int) -> None:
    assert set(result) == {"depth", "cosine", "update", "suggested"}
    assert result["depth"] == depth
    cosine = result["cosine"]
    assert len(cosine) == depth and all(len(row) == depth for row in cosine)
    for i in range(depth):
        assert cosine[i][i] == pytest.approx(1.0, abs=1e-5)
        for j in range(depth):
            if cosine[i][j] is None:  # blocks of different shapes, both ways
                assert cosine[j][i] is None
                continue
            assert cosine[i][j] == pytest.approx(cosine[j][i], abs=1e-6)
            assert -1.0 - 1e-5 <= cosine[i][j] <= 1.0 + 1e-5
    assert len(result["update"]) == depth
    student, teacher = result["suggested"]["student"], result["suggested"]["teacher"]
    assert 1 <= student < teacher <= depth


@pytest.fixture
def trained_demo(tmp_path):
    """A demo model whose blocks are not the identity (a fresh one's adaLN-Zero blocks are)."""
    torch.manual_seed(0)
    model = DemoDiT(**dict(DEMO_MODEL_CONFIG, num_layers=6))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "demo-model")
    return tmp_path / "demo-model"


def test_a_fresh_demo_model_maps_as_identity_blocks():
    result = probe(validate_config({}), **TINY)
    check_map(result, 16)
    assert all(value == pytest.approx(1.0, abs=1e-5) for row in result["cosine"] for value in row)
    assert result["update"] == [0.0] * 16
    assert result["suggested"] == {"student": 5, "teacher": 9}


def test_the_demo_map_of_a_trained_model(trained_demo):
    result = probe(validate_config({"pretrained_model_name_or_path": str(trained_demo)}), **TINY)
    check_map(result, 6)
    off_diagonal = [result["cosine"][i][j] for i in range(6) for j in range(6) if i != j]
    assert min(off_diagonal) < 0.999
    assert all(value > 0 for value in result["update"])  # block 1's input is the embedded patches


def test_a_flux_map_across_its_double_and_single_blocks(tmp_path):
    model_dir = flux_pipeline(tmp_path / "flux")
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), {
        "prompt_embeds": torch.randn(4, 7, 32), "pooled_prompt_embeds": torch.randn(4, 32)})
    config = validate_config({"model_family": "flux", "pretrained_model_name_or_path": str(model_dir),
                              "instance_data_dir": str(data), "resolution": 16})
    result = probe(config, **TINY)
    check_map(result, 4)
    assert all(value is not None for row in result["cosine"] for value in row)
    assert all(value is not None and value > 0 for value in result["update"])


def test_a_unet_map_leaves_pairs_across_its_levels_undefined(tmp_path):
    from diffusers import EulerDiscreteScheduler

    from tests.trainer.families.test_sdxl import LEVEL_0
    from tests.trainer.families.tiny_unet import TEXT_DIM, tiny_unet
    from trainer.models import sdxl

    # the probe reads the UNet and the scheduler's noise schedule; the data comes encoded
    model_dir = tmp_path / "sdxl"
    tiny_unet().save_pretrained(model_dir / "unet")
    EulerDiscreteScheduler(**sdxl.STANDARD_SCHEDULER).save_pretrained(model_dir / "scheduler")
    cond = {"prompt_embeds": torch.randn(4, 77, TEXT_DIM), "pooled_prompt_embeds": torch.randn(4, 32),
            "add_time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).repeat(4, 1)}
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), cond, family="sdxl")
    config = validate_config({"model_family": "sdxl", "pretrained_model_name_or_path": str(model_dir),
                              "instance_data_dir": str(data), "resolution": 64})
    with torch.backends.mkldnn.flags(enabled=False):  # plain convolutions: oneDNN's are far slower at this size
        result = probe(config, **TINY)
    check_map(result, 11)
    for i in range(1, 12):
        for j in range(1, 12):
            assert (result["cosine"][i - 1][j - 1] is None) == ((i in LEVEL_0) != (j in LEVEL_0)), (i, j)
    # a block whose input sits at another level has no update: blocks 2 (level 0 → 1) and 10 (1 → 0)
    assert [i + 1 for i, value in enumerate(result["update"]) if value is None] == [2, 10]
    student, teacher = result["suggested"]["student"], result["suggested"]["teacher"]
    assert (student in LEVEL_0) == (teacher in LEVEL_0)
