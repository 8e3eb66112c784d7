"""LayerSync: pull a student block's hidden states toward a deeper teacher block's.

Usable as a library in anyone's loop::

    loss, similarity = layersync_loss(student_hidden, teacher_hidden, weight=0.2)
    (diffusion_loss + loss).backward()
"""

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from trainer.config import LAYERSYNC_DEFAULT_LAMBDA, ConfigError, FieldProblem, TrainConfig, resolve_block_index

__all__ = ["layersync_loss", "resolve_block_index", "LayerSync"]


def _tokens(hidden: torch.Tensor) -> torch.Tensor:
    """(B, T, P, D) → (B, T·P, D); (B, S, D) as is."""
    if hidden.ndim == 4:
        return hidden.flatten(1, 2)
    return hidden


def _check_shapes(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.ndim not in (3, 4) or teacher.ndim not in (3, 4) or student.shape != teacher.shape:
        raise ValueError(
            f"LayerSync needs student and teacher hidden states of the same shape, (B, S, D) or (B, T, P, D); "
            f"got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )


def _similarity(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean per-token cosine similarity, the teacher detached."""
    # detached: the teacher must not be pulled toward the student
    teacher = teacher.detach()
    # in fp32: bf16 dot products over D lose the small differences the loss is about
    s = F.normalize(_tokens(student).float(), dim=-1)  # (B, S, D)
    t = F.normalize(_tokens(teacher).float(), dim=-1)  # (B, S, D)
    return (s * t).sum(dim=-1).mean()


def layersync_loss(
    student: torch.Tensor, teacher: torch.Tensor, weight: float = LAYERSYNC_DEFAULT_LAMBDA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative cosine similarity between student and (detached) teacher tokens.

    Both are L2-normalised over D; the similarity is the per-token dot product averaged over batch
    and tokens. Returns ``(loss, similarity)`` with ``loss = -weight * similarity``.
    """
    _check_shapes(student, teacher)
    if weight <= 0:
        raise ValueError(f"LayerSync weight must be > 0, got {weight}")
    similarity = _similarity(student, teacher)
    return -weight * similarity, similarity


class LayerSync:
    """The regularizer of one run: resolved student→teacher pairs and the weight.

    Several pairs each count: the loss is ``-weight`` times the mean of the pairs' similarities,
    so the weight keeps its meaning whatever the number of pairs.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], depth: int, weight: float = LAYERSYNC_DEFAULT_LAMBDA):
        if not pairs:
            raise ValueError("LayerSync needs at least one student→teacher pair")
        if weight <= 0:
            raise ValueError(f"LayerSync weight must be > 0, got {weight}")
        self.weight = weight
        self._similarity = _similarity
        self.user_pairs = list(pairs)
        self.pairs = [
            (resolve_block_index(s, depth, "student"), resolve_block_index(t, depth, "teacher")) for s, t in pairs
        ]

    @classmethod
    def from_config(cls, config: TrainConfig, depth: int) -> "LayerSync | None":
        """None when LayerSync is off; ConfigError naming the key when a block does not exist."""
        if not config.layersync_enabled:
            return None
        try:
            return cls(config.pairs(), depth, config.layersync_lambda)
        except FieldProblem as exc:
            raise ConfigError([(exc.field, str(exc))]) from None

    @property
    def blocks(self) -> set[int]:
        """0-based blocks whose outputs must be captured."""
        return {block for pair in self.pairs for block in pair}

    def __call__(self, states: Mapping[int, torch.Tensor], weight: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """→ (loss, mean similarity, per-pair similarities), from the captured block outputs. ``weight`` is
        the weight in force this step (a schedule's, trainer/schedules.py); None: the run's ``weight``."""
        sims = []
        for student, teacher in self.pairs:
            _check_shapes(states[student], states[teacher])
            sims.append(self._similarity(states[student], states[teacher]))
        similarity = sims[0] if len(sims) == 1 else torch.stack(sims).mean()
        weight = self.weight if weight is None else weight
        if weight == 0:  # stopped: the similarity is still measured, the term is exactly 0 (not -0.0) and pulls nothing
            similarity = similarity.detach()
            return torch.zeros_like(similarity), similarity, [sim.detach() for sim in sims]
        return -weight * similarity, similarity, sims

    def compile(self, device: torch.device) -> str | None:
        """Fuse the similarity into a few kernels with torch.compile (worth it on a GPU, where the
        eager version is a dozen small launches and an fp32 copy of both states). Returns None when
        compiled, else why not (the eager version stays in use)."""
        compiled = torch.compile(_similarity, dynamic=None)
        try:  # compile errors surface on the first call: make it here, on a small case with grad
            probe = torch.randn(2, 4, 8, device=device, requires_grad=True)
            compiled(probe, torch.randn(2, 4, 8, device=device)).backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure just means eager
            return f"{type(exc).__name__}: {exc}".splitlines()[0]
        self._similarity = compiled
        return None

    def describe(self) -> str:
        pairs = ", ".join(
            f"{s}→{t} (blocks {rs}→{rt} counted from 0)"
            for (s, t), (rs, rt) in zip(self.user_pairs, self.pairs, strict=True)
        )
        return f"LayerSync on: student→teacher {pairs}, weight {self.weight}"
