"""Hidden-state capture: forward hooks that keep only the requested blocks' outputs, for one step.

The hooks store only while armed (during the training forward) and only a block's first output
of that forward. With gradient checkpointing a block runs a second time during backward; by then
the capture is disarmed, so the recomputation neither overwrites nor keeps anything.
"""

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Block:
    """One transformer block as LayerSync numbers it, and how to read its image token stream."""

    module: nn.Module
    stream: Callable[[object], torch.Tensor]  # block output (tensor or tuple) → (B, S, D) or (B, T, P, D)


def tensor_output(output: object) -> torch.Tensor:
    """The output of a block that returns its hidden states as one tensor."""
    return output


def tuple_element(index: int) -> Callable[[object], torch.Tensor]:
    """The output of a block that returns a tuple whose ``index`` element is the image stream."""

    def stream(output: object) -> torch.Tensor:
        return output[index]

    return stream


class HiddenStateCapture:
    """Keeps the outputs of ``indices`` among ``blocks`` for the forward run inside ``capture()``."""

    def __init__(self, blocks: Sequence[Block], indices: Iterable[int]):
        self._blocks = blocks
        self._states: dict[int, torch.Tensor] = {}
        self._armed = False
        self._handles = [blocks[i].module.register_forward_hook(self._hook(i)) for i in sorted(set(indices))]

    def _hook(self, index: int):
        stream = self._blocks[index].stream

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if self._armed and index not in self._states:
                self._states[index] = stream(output)

        return hook

    @contextmanager
    def capture(self) -> Iterator[dict[int, torch.Tensor]]:
        """Arm the hooks for one forward; the yielded dict fills as the blocks run."""
        self._states.clear()
        self._armed = True
        try:
            yield self._states
        finally:
            self._armed = False

    def release(self) -> None:
        """Drop the step's states (call once the loss is built; autograd keeps what backward needs)."""
        self._states.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._states.clear()

    def __enter__(self) -> "HiddenStateCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
