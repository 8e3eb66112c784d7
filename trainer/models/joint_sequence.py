"""The image tokens of a joint (text + image) sequence, for blocks that return the whole sequence.

Single-stream blocks (Chroma, Flux.2, HiDream, Z-Image) return one tensor holding text and image
tokens side by side. Where the image tokens sit depends on the forward's inputs (the text length,
the latent size), so a forward pre-hook on the model reads it from those inputs at every forward,
the validation pipeline's forwards included, and the block's stream selector slices by it.
"""

from collections.abc import Callable

import torch
from torch import nn

from trainer.capture import Block, tuple_element

Locate = Callable[[tuple, dict], slice]  # (forward args, forward kwargs) → where the image tokens are


def model_input(args: tuple, kwargs: dict, name: str, position: int = 0):
    """A forward input passed by keyword (as predict passes it) or by position (as some pipelines do)."""
    return kwargs[name] if name in kwargs else args[position]


def after_encoder_states(args: tuple, kwargs: dict) -> slice:
    """Text first: the image tokens follow the ``encoder_hidden_states`` (the forward's second input)."""
    return slice(model_input(args, kwargs, "encoder_hidden_states", 1).shape[1], None)


def image_span(model: nn.Module, locate: Locate) -> Callable[[torch.Tensor], torch.Tensor]:
    """A stream selector returning ``output[:, span]``, the span located from the model's inputs."""
    state: dict[str, slice] = {}

    def record(module, args, kwargs):
        state["span"] = locate(args, kwargs)

    previous = getattr(model, "_layersync_span_hook", None)
    if previous is not None:  # blocks() called again: one hook per model is enough
        previous.remove()
    model._layersync_span_hook = model.register_forward_pre_hook(record, with_kwargs=True)

    def stream(output: torch.Tensor) -> torch.Tensor:
        return output[:, state["span"]]  # (B, image tokens, D)

    return stream


def double_then_single_blocks(model: nn.Module) -> list[Block]:
    """Flux-style stacks whose single blocks return one [text, image] sequence: ``transformer_blocks``
    (returning (text, image)), then ``single_transformer_blocks`` with the text sliced off."""
    after_text = image_span(model, after_encoder_states)
    return ([Block(b, tuple_element(1)) for b in model.transformer_blocks]
            + [Block(b, after_text) for b in model.single_transformer_blocks])
