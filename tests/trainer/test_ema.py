"""The EMA of the trainable weights: its average, its swap for sampling, and its place in a checkpoint."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.ema import EMA
from trainer.models.demo_dit import DemoDiT


def tiny_model() -> DemoDiT:
    torch.manual_seed(0)
    return DemoDiT(hidden_size=32, num_layers=2, num_attention_heads=2)


def test_each_update_moves_the_average_a_share_of_the_way_to_the_weights():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 0.1)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], start + 0.1 + 0.1 * 0.9)


def test_only_trainable_weights_are_averaged():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    model[0].requires_grad_(False)
    assert set(EMA(model, 0.99).state_dict()) == {"1.weight", "1.bias"}


def test_applied_swaps_the_average_in_and_puts_the_trained_weights_back_even_on_error():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5)
    trained = model.weight.detach().clone()
    with torch.no_grad():
        ema.shadow["weight"].fill_(7.0)
    with pytest.raises(RuntimeError), ema.applied(model):
        assert torch.equal(model.weight, torch.full((2, 2), 7.0))
        raise RuntimeError("a sampler failed")
    assert torch.equal(model.weight, trained)


def test_the_average_is_saved_under_the_parameter_names_and_restored(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    ema = EMA(model, 0.9)
    for value in ema.shadow.values():
        value.fill_(0.25)
    path = save_checkpoint(tmp_path, 4, model, optimizer, {}, ema=ema)
    fresh = EMA(model, 0.9)
    assert load_checkpoint(path, model, optimizer, ema=fresh) == 4
    assert set(fresh.state_dict()) == {name for name, _ in model.named_parameters()}
    assert all(torch.equal(value, torch.full_like(value, 0.25)) for value in fresh.state_dict().values())


def test_a_checkpoint_written_by_earlier_versions_loads_its_average(tmp_path):
    """ema.safetensors has always held {parameter name: tensor} of the trainable weights."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 2, model, optimizer, {})
    save_file({name: torch.full_like(p, 0.5).contiguous() for name, p in model.named_parameters()}, path / "ema.safetensors")
    ema = EMA(model, 0.9)
    load_checkpoint(path, model, optimizer, ema=ema)
    assert all(torch.equal(value, torch.full_like(value, 0.5)) for value in ema.shadow.values())


def test_a_checkpoint_without_an_average_starts_it_from_the_weights(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters())
    path = save_checkpoint(tmp_path, 2, model, optimizer, {})
    ema = EMA(model, 0.9)
    for value in ema.shadow.values():
        value.zero_()
    load_checkpoint(path, model, optimizer, ema=ema)
    assert all(torch.equal(ema.shadow[name], p) for name, p in model.named_parameters())
