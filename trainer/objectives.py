"""Training objectives: how a step noises the latents and what the model must predict.

``flow`` is rectified flow as diffusers' flow-matching pipelines sample it: x = (1 - sigma) * latents
+ sigma * noise, the model predicts the velocity noise - latents, and sigma goes 1 → 0 when sampling.
``ddpm`` is the noise schedule of a DDPM-trained model (PixArt, SDXL), with the prediction type of
its own scheduler config. Which timesteps a step draws and how the loss weighs them (logit-normal
and shifted flow timesteps, min-SNR, offset noise) is trainer/timesteps.py.
"""

import torch
import torch.nn.functional as F

from trainer.timesteps import FlowTimesteps, flow_timesteps, min_snr_weights, offset_noise


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


class Objective:
    """What both objectives share: the step's noise and the loss."""

    noise_offset = 0.0

    def noise(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device)
        return offset_noise(noise, self.noise_offset, generator)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        return None

    def loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The mean squared error, each example weighted as the objective weighs its timestep (min-SNR)."""
        weights = self.loss_weights(t)
        if weights is None:
            return F.mse_loss(pred.float(), target.float())
        per_example = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=list(range(1, pred.ndim)))
        return (per_example * weights).mean()


class FlowMatching(Objective):
    name = "flow"

    def __init__(self, schedule: FlowTimesteps | None = None, noise_offset: float = 0.0):
        self.schedule = schedule or FlowTimesteps()
        self.noise_offset = noise_offset

    def timesteps(self, n: int, generator: torch.Generator, device, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """sigma of each example: ``shape`` is the batch's latent shape (the auto shift counts its tokens)."""
        return self.schedule.sample(n, generator, device, shape)

    def describe(self) -> str:
        return self.schedule.describe() + (f"; noise offset {self.noise_offset:g}" if self.noise_offset else "")

    def eval_timesteps(self, n: int, device) -> torch.Tensor:
        return (torch.arange(n, device=device) + 0.5) / n  # evenly spread, fixed

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = _expand(t, latents)
        return (1 - sigma) * latents + sigma * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - latents


class DDPM(Objective):
    name = "ddpm"

    def __init__(self, scheduler_config: dict, device, snr_gamma: float | None = None, noise_offset: float = 0.0):
        from diffusers import DDPMScheduler

        config = {key: value for key, value in scheduler_config.items() if not key.startswith("_")}
        scheduler = DDPMScheduler.from_config(config)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not epsilon, v_prediction or sample")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.scheduler, self.snr_gamma, self.noise_offset = scheduler, snr_gamma, noise_offset

    def timesteps(self, n: int, generator: torch.Generator, device, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor | None:
        if self.snr_gamma is None:
            return None
        return min_snr_weights(self.scheduler, t, self.snr_gamma, self.prediction_type)

    def describe(self) -> str:
        parts = [f"timesteps: uniform over the scheduler's {self.num_train_timesteps}, {self.prediction_type} prediction"]
        if self.snr_gamma is not None:
            parts.append(f"min-SNR weighting (gamma {self.snr_gamma:g})")
        if self.noise_offset:
            parts.append(f"noise offset {self.noise_offset:g}")
        return "; ".join(parts)

    def eval_timesteps(self, n: int, device) -> torch.Tensor:
        return ((torch.arange(n, device=device) + 0.5) / n * self.num_train_timesteps).long()

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor):
        alpha_bar = self.alphas_cumprod[t]
        return _expand(alpha_bar.sqrt(), like), _expand((1 - alpha_bar).sqrt(), like)

    def noisy(self, latents, noise, t):
        a, s = self._coefficients(t, latents)
        return a * latents + s * noise

    def target(self, latents, noise, t):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return latents
        a, s = self._coefficients(t, latents)
        return a * noise - s * latents  # v


def objective_for(impl, config, device):
    from trainer.families import find_family

    noise_offset = config.noise_offset
    if impl.objective == "flow":
        return FlowMatching(flow_timesteps(config, patch=find_family(config.model_family).flow_patch), noise_offset)
    if impl.objective == "ddpm":
        return DDPM(impl.ddpm_scheduler_config(config), device, snr_gamma=config.snr_gamma, noise_offset=noise_offset)
    raise ValueError(f"unknown objective {impl.objective!r}")
