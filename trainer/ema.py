"""Exponential moving average of the trainable weights, for sampling.

Only the trainable parameters are averaged (a LoRA run's adapter, not the frozen model); the shadow
weights are keyed by parameter name, the keys of ``ema.safetensors`` in a checkpoint."""

from contextlib import contextmanager

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in _trainable(model).items()}
        # shadow ← decay · shadow + (1 − decay) · weights, over all tensors at once (multi-tensor kernels)
        self._average = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = _trainable(model)
        names = list(self.shadow)
        if names:  # the average function reads the first tensor's dtype
            self._average([self.shadow[n] for n in names], [params[n].detach() for n in names], None)

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        for name, p in _trainable(model).items():
            self.shadow[name].copy_(p)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextmanager
    def applied(self, model: nn.Module):
        """Swap the EMA weights in for the duration (sampling), then put the trained ones back."""
        params = _trainable(model)
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
