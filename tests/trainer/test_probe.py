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
