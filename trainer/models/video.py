"""What the video families share: a (B, T, P, D) view of their token streams, sizes of their validation
videos, and pipeline videos brought back to [-1, 1]. (Frame counts are checked at submit time, against
the registry's temporal_factor.)"""

from collections.abc import Callable

import torch
from torch import nn

from trainer.config import TrainConfig


def frame_view(model: nn.Module, latent_frames: Callable[[tuple, dict], int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, T·P, D) → (B, T, P, D). T is read from each forward's inputs by ``latent_frames(args, kwargs)``
    in a pre-hook on the model, so the view is right whoever calls the model (training, samplers)."""
    seen = getattr(model, "_layersync_frames", None)
    if seen is None:  # one hook per model, however often its blocks are listed
        seen = model._layersync_frames = {}
        model.register_forward_pre_hook(lambda module, args, kwargs: seen.update(frames=latent_frames(args, kwargs)),
                                        with_kwargs=True)

    def view(tokens: torch.Tensor) -> torch.Tensor:
        return tokens.unflatten(1, (seen["frames"], -1))

    return view


def hidden_states_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The ``hidden_states`` a model's forward was called with, by keyword or first positional."""
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def sample_kwargs(config: TrainConfig) -> dict:
    """A validation video's size, length and steps, as every video pipeline's __call__ takes them."""
    return {"height": config.resolution, "width": config.resolution, "num_frames": config.num_frames,
            "num_inference_steps": config.validation_num_inference_steps, "output_type": "pt"}


def to_signed(frames: torch.Tensor) -> torch.Tensor:
    """A pipeline's ``output_type="pt"`` video (N, T, C, H, W) in [0, 1] → (N, C, T, H, W) in [-1, 1]."""
    return frames.permute(0, 2, 1, 3, 4) * 2 - 1
