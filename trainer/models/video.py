"""What the video families share: their VAEs' frame-count rule, a (B, T, P, D) view of their token
streams, and pipeline videos brought back to [-1, 1]."""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainer.config import ConfigError, TrainConfig
from trainer.encode import PipelineSpec, is_encoded_folder, pipeline_data


def check_num_frames(num_frames: int, temporal_factor: int, label: str) -> None:
    """Causal video VAEs keep the first frame and compress every ``temporal_factor`` frames after it."""
    if (num_frames - 1) % temporal_factor:
        lower = (num_frames - 1) // temporal_factor * temporal_factor + 1
        raise ConfigError([("num_frames", (
            f"num_frames {num_frames} does not fit {label}'s VAE, which needs {temporal_factor}k+1 frames: "
            f"use {lower} or {lower + temporal_factor}"
        ))])


def video_data(spec: PipelineSpec, temporal_factor: int, label: str):
    """A video family's ``load_data``: the frame count checked before anything is encoded."""
    encode = pipeline_data(spec, "video")

    def load_data(config: TrainConfig, device: torch.device, log):
        if not is_encoded_folder(Path(config.instance_data_dir).expanduser()):  # an encoded folder's frames are fixed
            check_num_frames(config.num_frames, temporal_factor, label)
        return encode(config, device, log)

    return load_data


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
