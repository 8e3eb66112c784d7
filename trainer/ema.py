"""Exponential moving average of the weights, for sampling."""

from contextlib import contextmanager

import torch
from torch import nn


def _trainable(model: nn.Module):
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in _trainable(model)}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names = list(self.shadow)
        params = dict(_trainable(model))
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names], 1 - self.decay)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for name, p in _trainable(model):
            self.shadow[name].copy_(p)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module):
        """Swap the EMA weights in for the duration (sampling), then put the trained ones back."""
        params = dict(_trainable(model))
        backup = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])
