"""Validation output: sample grids (images, video frames) or audio files, and the fixed-noise loss."""

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

VALIDATION_SEED = 0  # fixed across runs, so runs that differ only in their config compare


class Samplers:
    """What one run makes its validation samples with (a family's pipeline around the model being
    trained, a VAE), built at the first sample and kept for the next ones. The run owns it and
    releases it when it ends, so the pipeline and the model and VAE it holds are freed with the run.

    Keys hold their objects (the model itself, not its ``id``), so a key never matches a different
    model that happens to sit at a freed one's address."""

    def __init__(self):
        self._held: dict[object, object] = {}

    def get(self, key, build):
        """The object kept under ``key``, built by ``build()`` the first time; one is kept at a time
        (a second pipeline would hold a second VAE in device memory)."""
        if key not in self._held:
            self._held.clear()
            self._held[key] = build()
        return self._held[key]

    def release(self) -> None:
        self._held.clear()


def image_grid(images: torch.Tensor, columns: int, min_size: int = 64) -> Image.Image:
    """(N, C, H, W) in [-1, 1] → one grid image, upscaled (nearest) so small samples stay visible."""
    n, c, h, w = images.shape
    rows = (n + columns - 1) // columns
    pad = torch.full((rows * columns - n, c, h, w), -1.0)
    grid = torch.cat([images.float().cpu(), pad]).view(rows, columns, c, h, w).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * h, columns * w, c)
    pixels = ((grid + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels[..., :3])
    scale = max(1, min_size // max(h, w))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    return image


def save_media(output: torch.Tensor, path: Path, audio_sample_rate: int = 44100) -> Path:
    """Images (N, C, H, W) → a PNG grid; videos (N, C, T, H, W) → a PNG with one row of frames per
    video; audio (N, channels, samples) → a WAV of the first sample. Returns the written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.ndim == 4:
        target = path.with_suffix(".png")
        image_grid(output, columns=min(len(output), 10 if output.shape[1] == 1 else 4)).save(target)
    elif output.ndim == 5:
        n, c, t, h, w = output.shape
        frames = output.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        target = path.with_suffix(".png")
        image_grid(frames, columns=t).save(target)
    elif output.ndim == 3:
        import wave

        target = path.with_suffix(".wav")
        audio = (output[0].clamp(-1, 1).T.contiguous().numpy() * 32767).astype("<i2")
        with wave.open(str(target), "wb") as wav:
            wav.setnchannels(output.shape[1])
            wav.setsampwidth(2)
            wav.setframerate(audio_sample_rate)
            wav.writeframes(audio.tobytes())
    else:
        raise ValueError(f"cannot save a sample of shape {tuple(output.shape)}")
    return target


@torch.no_grad()
def fixed_noise_loss(impl, objective, model, data, batch_size: int = 64) -> float:
    """The training loss on the evaluation examples with fixed noise and evenly spread timesteps,
    so values of different steps and runs compare."""
    generator = torch.Generator(device=data.device).manual_seed(VALIDATION_SEED)
    n = data.val_size
    t_all = objective.eval_timesteps(n, data.device)
    t_all = t_all[torch.randperm(n, generator=generator, device=data.device)]
    total, count, start = 0.0, 0, 0
    for latents, cond in data.eval_batches(batch_size):
        noise = torch.randn(latents.shape, generator=generator, device=data.device)
        t = t_all[start : start + len(latents)]
        start += len(latents)
        pred = impl.predict(model, objective.noisy(latents, noise, t), t, cond)
        total += F.mse_loss(pred.float(), objective.target(latents, noise, t).float(), reduction="sum").item()
        count += latents.numel()
    return total / max(1, count)
