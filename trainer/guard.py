"""The collapse guard: how much work the blocks between student and teacher still do, and a warning
(or a stop) when they approach the identity.

LayerSync pulls the student's tokens toward the teacher's. One way for a model to satisfy it is to let
the blocks in between do nothing, so that the teacher's stream is the student's: the similarity then
rises to 1 while the model loses those blocks' depth. ``SpanMeter`` measures the span's mean relative
update ‖h_out − h_in‖ / ‖h_in‖ (0: every block in the span is the identity) from forward hooks, only on
the forwards it is armed for (the logging steps), so the other steps pay for nothing but a no-op hook.
``CollapseGuard`` watches that measure across the run and says when it has fallen far below its best.
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from trainer.blockstats import relative_update
from trainer.capture import Block

# Thresholds, from demo runs measured with bench/collapse.py (README, "λ schedules, the stop step and the
# collapse guard"): the guard arms once the span's update has reached ARM_AT (the demo's blocks start as the
# identity, adaLN-Zero, so an early small value is no collapse), fires when it falls below FIRE_FRACTION of
# the run's best, and re-arms once it has recovered to REARM_FRACTION of the best (no warning per log line).
ARM_AT = 0.05
FIRE_FRACTION = 0.25
REARM_FRACTION = 0.5


def span_blocks(pairs: Iterable[tuple[int, int]]) -> list[int]:
    """0-based blocks strictly between a student and its teacher, over every pair."""
    return sorted({b for student, teacher in pairs for b in range(min(student, teacher) + 1, max(student, teacher))})


class SpanMeter:
    """Mean relative update of ``span`` (0-based blocks) over the armed forward, from each block's stream
    and the stream of the block before it (a pair of a different shape, e.g. a text+image stream
    beside an image one, is left out)."""

    def __init__(self, blocks: Sequence[Block], span: Iterable[int]):
        self.span = sorted(set(span))
        self._blocks = blocks
        self._armed = False
        self._previous: dict[int, torch.Tensor] = {}
        self._sum: torch.Tensor | None = None
        self._count = 0
        watched = sorted({i - 1 for i in self.span} | set(self.span))
        self._handles = [blocks[i].module.register_forward_hook(self._hook(i)) for i in watched]

    def _hook(self, index: int):
        stream, in_span, feeds_next = self._blocks[index].stream, index in self.span, index + 1 in self.span

        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not self._armed:
                return
            with torch.no_grad():
                h_out = stream(output).detach()
                h_in = self._previous.pop(index - 1, None)
                if in_span and h_in is not None and h_in.shape == h_out.shape and h_out.ndim in (3, 4):
                    update = relative_update(h_in, h_out)
                    self._sum = update if self._sum is None else self._sum + update
                    self._count += 1
                if feeds_next:
                    self._previous[index] = h_out

        return hook

    @contextmanager
    def measure(self, on: bool = True) -> Iterator[None]:
        """Measure the forward run inside (a block recomputed later, by gradient checkpointing, is not)."""
        if not on:
            yield
            return
        self._sum, self._count, self._armed = None, 0, True
        try:
            yield
        finally:
            self._armed = False
            self._previous.clear()

    def read(self) -> torch.Tensor | None:
        """The last measured forward's mean (a 0-dim tensor, still on the device), or None if nothing was measured."""
        value = None if self._sum is None else self._sum / self._count
        self._sum, self._count = None, 0
        return value

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._previous.clear()


class CollapseGuard:
    """Watches the span update of each metric event. ``observe`` returns a warning in words when the span
    falls below FIRE_FRACTION of its best (once the best has reached ARM_AT), once until it recovers to
    REARM_FRACTION. With ``on_collapse="stop"`` the first firing also sets ``stopped_at``: LayerSync's
    weight is 0 from the next step on. Its state goes into checkpoints, so a resumed run judges as the
    unbroken one would."""

    def __init__(self, on_collapse: str = "warn", span_text: str = "the blocks between student and teacher"):
        self.on_collapse = on_collapse
        self.span_text = span_text
        self.best: float | None = None
        self.best_step: int | None = None
        self.armed = False
        self.fired: list[int] = []
        self.stopped_at: int | None = None

    def observe(self, step: int, span: float | None) -> str | None:
        if span is None:
            return None
        if self.best is None or span > self.best:
            self.best, self.best_step = span, step
        if self.best < ARM_AT:
            return None
        if not self.armed:
            # the first arming (or a recovery after a warning): from now on a fall is news
            if span >= REARM_FRACTION * self.best:
                self.armed = True
            return None
        if span >= FIRE_FRACTION * self.best:
            return None
        self.armed = False
        self.fired.append(step)
        share = span / self.best
        words = (f"LayerSync collapse guard: at step {step} {self.span_text} barely change their input any more: "
                 f"their mean relative update is {span:.4g}, {share:.0%} of its best {self.best:.4g} (step "
                 f"{self.best_step}). LayerSync may be pulling them toward the identity, so the similarity rises "
                 "because they stop working. ")
        if self.on_collapse == "stop" and self.stopped_at is None:
            self.stopped_at = step + 1
            return words + (f"layersync_on_collapse is stop: LayerSync's weight is 0 from step {step + 1} on "
                            "(the similarity is still measured and logged).")
        if self.stopped_at is not None:
            return words + f"LayerSync's weight is already 0 since step {self.stopped_at}."
        return words + ("Training goes on with LayerSync (layersync_on_collapse is warn): set it to stop, a "
                        "layersync_stop_step, a decaying layersync_lambda_schedule or a lower layersync_lambda.")

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "armed": self.armed, "fired": list(self.fired),
                "stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.armed, self.fired = bool(state.get("armed")), list(state.get("fired") or [])
        self.stopped_at = state.get("stopped_at")


GUARD_STATE = "layersync_guard"  # the guard's key in a checkpoint's state.json


def set_up_guard(config, layersync, blocks: Sequence[Block], log) -> tuple[SpanMeter | None, CollapseGuard | None]:
    """The span meter and the guard of a run; (None, None) when LayerSync is off or no block lies between
    a student and its teacher (then layersync_span_update is None in every metric event)."""
    if layersync is None:
        return None, None
    span = span_blocks(layersync.pairs)
    if not span:
        log("no block lies between student and teacher: layersync_span_update is not measured and the collapse "
            "guard is off")
        return None, None
    numbered = ", ".join(str(b + 1) for b in span)  # as the user counts blocks, from 1
    guard = CollapseGuard(config.layersync_on_collapse, f"the blocks between student and teacher ({numbered})")
    return SpanMeter(blocks, span), guard
