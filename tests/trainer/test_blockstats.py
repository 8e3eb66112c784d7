import math

import pytest
import torch

from trainer.blockstats import relative_update, token_cosine
from trainer.layersync import layersync_loss


def test_relative_update_is_the_norm_ratio_over_tokens_and_features():
    h_in = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # ‖h_in‖ = 5
    h_out = h_in + torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # ‖Δ‖ = 1
    assert relative_update(h_in, h_out).item() == pytest.approx(0.2)


def test_relative_update_of_the_identity_is_zero_and_needs_no_grad():
    h = torch.randn(2, 4, 3, 8, requires_grad=True)
    update = relative_update(h, h * 1.0)
    assert update.item() == 0.0
    assert update.ndim == 0 and update.dtype == torch.float32 and not update.requires_grad


def test_relative_update_reads_bf16_in_fp32():
    h = torch.ones(1, 4, 256, dtype=torch.bfloat16)
    assert relative_update(h, h * 2).item() == pytest.approx(1.0)


def test_token_cosine_matches_a_hand_computed_case_and_layersyncs_similarity():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    b = torch.tensor([[[3.0, 0.0], [1.0, 1.0]]])
    assert token_cosine(a, b).item() == pytest.approx((1.0 + 1.0 / math.sqrt(2.0)) / 2.0, abs=1e-6)
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 8, requires_grad=True), torch.randn(2, 3, 4, 8)
    cosine = token_cosine(a, b)
    assert not cosine.requires_grad
    assert cosine.item() == pytest.approx(layersync_loss(a, b)[1].item(), abs=1e-6)


@pytest.mark.parametrize("measure", [relative_update, token_cosine])
def test_streams_of_different_shapes_are_refused_with_both_shapes(measure):
    with pytest.raises(ValueError) as info:
        measure(torch.zeros(2, 4, 8), torch.zeros(2, 4, 16))
    assert "(2, 4, 8)" in str(info.value) and "(2, 4, 16)" in str(info.value)
