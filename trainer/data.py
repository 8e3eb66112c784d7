"""The demo dataset: scikit-learn's handwritten digits (shipped inside the package; no download)."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

HELD_OUT_FRACTION = 0.1


@dataclass
class ImageDataset:
    """Images in [-1, 1] as (N, C, H, W) with integer class labels, split into train and held-out."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int

    def to(self, device: torch.device) -> "ImageDataset":
        return ImageDataset(
            self.train_images.to(device),
            self.train_labels.to(device),
            self.val_images.to(device),
            self.val_labels.to(device),
            self.num_classes,
        )

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.train_images), (size,), generator=generator, device=generator.device)
        return self.train_images[index], self.train_labels[index]


def load_digits_dataset(resolution: int = 16) -> ImageDataset:
    """1,797 8×8 digits, scaled to [-1, 1] and resized to ``resolution``; a fixed 10 % is held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]  # (N, 1, 8, 8)
    if resolution != images.shape[-1]:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = images.clamp(-1, 1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    # the split never depends on the run's seed, so held-out losses of different runs compare
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))
    n_val = int(len(images) * HELD_OUT_FRACTION)
    val, train = order[:n_val], order[n_val:]
    return ImageDataset(images[train], labels[train], images[val], labels[val], num_classes=10)
