"""Aspect-ratio buckets, the SimpleTuner / kohya way: each image trains at a size of about resolution²
pixels whose sides are multiples of the family's resolution multiple and whose aspect is nearest its own,
so nothing is cropped to a square (unless ``center_crop``). Every batch comes from one bucket.

``bucket_size`` picks an image's bucket; ``BucketedData`` is the dataset of several buckets, with the same
interface the loop uses on a ``LatentDataset`` (one of which is each bucket). The bucket of a batch is
drawn from the step's generator, so (seed, step) still fixes every batch.
"""

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from trainer.data import LatentDataset

MAX_ASPECT = 4.0  # wider (or taller) images train at 4:1 and lose the rest of their length to the crop


def bucket_size(width: int, height: int, resolution: int, multiple: int) -> tuple[int, int]:
    """(width, height) of the bucket of a ``width`` × ``height`` image: about resolution² pixels, both sides
    multiples of ``multiple``, the aspect as near the image's as that allows. A square image's bucket is
    (resolution, resolution) whenever the resolution is a multiple."""
    aspect = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    area = resolution * resolution

    def side(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    w = side((area * aspect) ** 0.5)
    h = side((area / aspect) ** 0.5)
    return w, h


def bucket_key(width: int, height: int) -> str:
    return f"{width}x{height}"


def parse_bucket_key(key: str) -> tuple[int, int]:
    width, height = key.split("x")
    return int(width), int(height)


def fit_to_bucket(image, size: tuple[int, int]):
    """A PIL image resized to cover ``size`` (w, h) with its aspect kept, then center-cropped to it: only the
    sliver that the rounding of the bucket's sides leaves over is cut."""
    from PIL import Image

    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


@dataclass
class BucketedData:
    """Several buckets of one dataset, each a ``LatentDataset`` of one latent shape; they share the null
    condition and the validation prompts. A batch draws its bucket with probability proportional to the
    bucket's examples, then its examples within it."""

    buckets: list[LatentDataset]
    names: list[str]  # "WxH" in pixels, one per bucket

    def __post_init__(self):
        self._ends = list(torch.tensor([len(b) for b in self.buckets]).cumsum(0).tolist())

    def __len__(self) -> int:
        return self._ends[-1]

    def __getattr__(self, name):  # what every bucket shares: null_cond, prompts, prompt_cond, held_out, info, device
        if name in ("buckets", "names", "_ends"):
            raise AttributeError(name)
        return getattr(self.buckets[0], name)

    @property
    def val_size(self) -> int:
        return sum(b.val_size for b in self.buckets)

    def to(self, device: torch.device) -> "BucketedData":
        for bucket in self.buckets:
            bucket.to(device)
        return self

    def bucket_of(self, example: int) -> int:
        return bisect.bisect_right(self._ends, example)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One bucket's random batch: an example drawn over the whole dataset picks the bucket. It is drawn on the
        CPU from the step's seed, so picking a bucket never waits for the GPU."""
        # a stream of its own (the seed mixed), so the pick is not the first draw of the batch's stream
        pick = torch.Generator().manual_seed((generator.initial_seed() * 0x9E3779B97F4A7C15 + 1) % 2**63)
        example = int(torch.randint(len(self), (1,), generator=pick))
        return self.buckets[self.bucket_of(example)].batch(size, generator)

    def drop(self, cond: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.buckets[0].drop(cond, mask)

    def eval_batches(self, size: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """Each bucket's evaluation examples in order, bucket by bucket (a batch never mixes shapes)."""
        for bucket in self.buckets:
            yield from bucket.eval_batches(size)

    def describe(self) -> str:
        sizes = ", ".join(f"{name} ({len(b)})" for name, b in zip(self.names, self.buckets, strict=True))
        return f"{len(self.buckets)} aspect buckets: {sizes}"
