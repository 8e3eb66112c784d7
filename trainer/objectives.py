"""Training objectives: how a step noises the latents and what the model must predict.

``flow`` is rectified flow as diffusers' flow-matching pipelines sample it: x = (1 - sigma) * latents
+ sigma * noise, the model predicts the velocity noise - latents, and sigma goes 1 → 0 when sampling.
``ddpm`` is the noise schedule of a DDPM-trained model (PixArt, SDXL), with the prediction type of
its own scheduler config.
"""

import torch


def _expand(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.ndim - 1)))


class FlowMatching:
    name = "flow"

    def timesteps(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    def eval_timesteps(self, n: int, device) -> torch.Tensor:
        return (torch.arange(n, device=device) + 0.5) / n  # evenly spread, fixed

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = _expand(t, latents)
        return (1 - sigma) * latents + sigma * noise

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - latents


class DDPM:
    name = "ddpm"

    def __init__(self, scheduler_config: dict, device):
        from diffusers import DDPMScheduler

        config = {key: value for key, value in scheduler_config.items() if not key.startswith("_")}
        scheduler = DDPMScheduler.from_config(config)
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"scheduler prediction_type {self.prediction_type!r} is not epsilon, v_prediction or sample")
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)

    def timesteps(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device)

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
    if impl.objective == "flow":
        return FlowMatching()
    if impl.objective == "ddpm":
        return DDPM(impl.ddpm_scheduler_config(config), device)
    raise ValueError(f"unknown objective {impl.objective!r}")
