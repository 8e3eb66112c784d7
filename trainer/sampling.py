"""Validation: sample grids with a few Euler steps from fixed noise, and the held-out flow loss."""

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

VALIDATION_SEED = 0  # fixed across runs, so runs that differ only in their config compare


@torch.no_grad()
def euler_sample(impl, model, labels: torch.Tensor, shape: tuple, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """Integrate the learned velocity from noise (t=0) to data (t=1); classifier-free guidance when > 1."""
    device = labels.device
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn((len(labels), *shape), generator=generator, device=device)
    null = impl.null_condition(model, labels)
    for i in range(steps):
        t = torch.full((len(labels),), i / steps, device=device)
        if guidance > 1:
            v_cond, v_null = impl.predict(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            v = v_null + guidance * (v_cond - v_null)
        else:
            v = impl.predict(model, x, t, labels)
        x = x + v.float() / steps
    return x.clamp(-1, 1)


def save_grid(images: torch.Tensor, path: Path, columns: int, scale: int = 4) -> None:
    """(N, C, H, W) in [-1, 1] → one PNG grid, upscaled so small digits are visible."""
    n, c, h, w = images.shape
    rows = (n + columns - 1) // columns
    pad = torch.full((rows * columns - n, c, h, w), -1.0, device=images.device)
    grid = torch.cat([images.float(), pad]).view(rows, columns, c, h, w).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * h, columns * w, c)
    pixels = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@torch.no_grad()
def held_out_loss(impl, model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Flow-matching loss on the held-out images with fixed noise and evenly spread t."""
    generator = torch.Generator(device=images.device).manual_seed(VALIDATION_SEED)
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    t = (torch.arange(len(images), device=images.device) + 0.5) / len(images)
    t = t[torch.randperm(len(images), generator=generator, device=images.device)]
    total = 0.0
    for start in range(0, len(images), batch_size):
        x1, x0, tb = images[start : start + batch_size], noise[start : start + batch_size], t[start : start + batch_size]
        x_t = (1 - tb.view(-1, 1, 1, 1)) * x0 + tb.view(-1, 1, 1, 1) * x1
        pred = impl.predict(model, x_t, tb, labels[start : start + batch_size])
        total += F.mse_loss(pred.float(), x1 - x0, reduction="sum").item()
    return total / images.numel()


def grid_labels(num_classes: int, per_class: int, device) -> torch.Tensor:
    """Each class ``per_class`` times, one class per column."""
    return torch.arange(num_classes, device=device).repeat(per_class)
