"""Training data as the loop sees it: latents plus conditioning tensors, whatever the family.

The demo's digits are images (its "latents" are pixels) with class labels; pipeline families
encode a folder of images, videos or audio once with their VAE and text encoders (trainer/encode.py).
"""

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

HELD_OUT_FRACTION = 0.1
EVAL_EXAMPLES = 64  # examples of the fixed-noise loss when nothing is held out
DEVICE_RESIDENT_BYTES = 2 << 30  # smaller datasets live on the device; larger stay in host memory


def _index(cond: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    return {key: value[index] for key, value in cond.items()}


def _move(cond: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """To ``device``; floating tensors as fp32 (caches may hold bf16 from GPU encoders; autocast picks
    the compute precision, and the models' own fp32 ops must not meet bf16 inputs)."""
    return {key: _float(value.to(device, non_blocking=True)) for key, value in cond.items()}


def _float(value: torch.Tensor) -> torch.Tensor:
    return value.float() if value.is_floating_point() else value


def _nbytes(*tensors_or_dicts) -> int:
    total = 0
    for item in tensors_or_dicts:
        values = item.values() if isinstance(item, dict) else [item]
        total += sum(t.numel() * t.element_size() for t in values if t is not None)
    return total


@dataclass
class LatentDataset:
    """Encoded examples: ``latents`` (N, ...) as the model takes them, ``cond`` a dict of (N, ...)
    tensors, ``null_cond`` the dropped condition (1, ...) used for caption dropout and guidance.

    ``val_*`` are held-out examples when ``held_out`` (else a fixed subset of the training ones);
    ``prompts`` / ``prompt_cond`` condition the validation samples."""

    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    null_cond: dict[str, torch.Tensor]
    val_latents: torch.Tensor
    val_cond: dict[str, torch.Tensor]
    held_out: bool = False
    prompts: list[str] = field(default_factory=list)
    prompt_cond: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # where the data came from (cache folder, pipeline directory, skipped files)
    device: torch.device = torch.device("cpu")  # where batches are delivered

    def __len__(self) -> int:
        return len(self.latents)

    @property
    def val_size(self) -> int:
        """Examples of the validation loss (held out, or the fixed subset)."""
        return len(self.val_latents)

    def to(self, device: torch.device) -> "LatentDataset":
        """Batches go to ``device``; the data itself moves there too unless it is large."""
        self.device = torch.device(device)
        if _nbytes(self.latents, self.cond, self.val_latents, self.val_cond) <= DEVICE_RESIDENT_BYTES:
            self.latents, self.cond = self.latents.to(device), _move(self.cond, device)
            self.val_latents, self.val_cond = self.val_latents.to(device), _move(self.val_cond, device)
        self.null_cond, self.prompt_cond = _move(self.null_cond, device), _move(self.prompt_cond, device)
        return self

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A random batch (with replacement); the generator decides, so (seed, step) fixes it."""
        index = torch.randint(len(self.latents), (size,), generator=generator, device=generator.device)
        index = index.to(self.latents.device)
        return _float(self.latents[index].to(self.device, non_blocking=True)), _move(_index(self.cond, index), self.device)

    def drop(self, cond: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Replace the condition of the examples where ``mask`` is true by the null condition."""
        out = {}
        for key, value in cond.items():
            null = self.null_cond[key].to(value.dtype).expand_as(value)
            keep = mask.view(-1, *([1] * (value.ndim - 1)))
            out[key] = torch.where(keep, null, value)
        return out

    def eval_batches(self, size: int):
        """The held-out (or fixed evaluation) examples in order, on the device."""
        for start in range(0, len(self.val_latents), size):
            index = slice(start, start + size)
            yield _float(self.val_latents[index].to(self.device)), _move(_index(self.val_cond, index), self.device)


def split(latents, cond, hold_out: bool, seed: int = 1234) -> tuple:
    """(train latents, train cond, val latents, val cond, held_out): 10 % held out with a fixed seed
    when asked and there are enough examples, else a fixed subset of the training examples."""
    n = len(latents)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if hold_out and n >= 20:
        n_val = int(n * HELD_OUT_FRACTION)
        val, train = order[:n_val], order[n_val:]
        return latents[train], _index(cond, train), latents[val], _index(cond, val), True
    val = order[:EVAL_EXAMPLES]
    return latents, cond, latents[val], _index(cond, val), False


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_digits_dataset(resolution: int = 16) -> LatentDataset:
    """1,797 8×8 digits, scaled to [-1, 1] and resized to ``resolution``; a fixed 10 % is held out.
    The condition is the class label; the null label is 10 (the demo model's extra embedding row)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    if resolution != images.shape[-1]:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = images.clamp(-1, 1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    # the split never depends on the run's seed, so held-out losses of different runs compare
    train_x, train_c, val_x, val_c, held_out = split(images, {"class_labels": labels}, hold_out=True)
    grid = torch.arange(10).repeat(2)  # two of each class, one class per column
    return LatentDataset(
        latents=train_x, cond=train_c, null_cond={"class_labels": torch.tensor([10])},
        val_latents=val_x, val_cond=val_c, held_out=held_out,
        prompts=[DIGIT_NAMES[i] for i in grid.tolist()], prompt_cond={"class_labels": grid},
        info={"source": "scikit-learn digits"},
    )
