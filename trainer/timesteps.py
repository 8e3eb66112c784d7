"""Which noise levels a training step draws, and how its loss weighs them: each family as its trainers train it.

Flow families draw u in (0, 1) with ``weighting_scheme`` (uniform, logit_normal, mode) through diffusers'
``compute_density_for_timestep_sampling``, then shift it the way the family's pipeline scheduler shifts
its sigmas: a fixed ``shift`` (SD3's 3.0: sigma = shift·u / (1 + (shift − 1)·u)), or, for pipelines that
shift by resolution (Flux's ``use_dynamic_shifting``), mu = ``calculate_shift`` of the batch's image
sequence length and the scheduler's exponential ``time_shift``. Unset keys take the values of the
family's own ``scheduler/scheduler_config.json``; a model directory without one (and the demo) trains
unshifted. DDPM families weigh the loss by min-SNR (``snr_gamma``, diffusers' ``compute_snr``).

Every random draw is from the step's generator: the arms of a study share their timesteps.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# FlowMatchEulerDiscreteScheduler's defaults, where a scheduler config leaves a key out
SCHEDULER_DEFAULTS = {"shift": 1.0, "use_dynamic_shifting": False, "base_image_seq_len": 256, "max_image_seq_len": 4096,
                      "base_shift": 0.5, "max_shift": 1.15, "time_shift_type": "exponential"}


def scheduler_config_file(pretrained: str | None) -> Path | None:
    """``scheduler/scheduler_config.json`` of the pipeline directory (or of the pipeline a component folder
    given directly sits in); None for the built-in model or a directory without one."""
    if not pretrained:
        return None
    root = Path(pretrained).expanduser()
    for pipeline_dir in (root, root.parent):
        candidate = pipeline_dir / "scheduler" / "scheduler_config.json"
        if candidate.is_file():
            return candidate
    return None


def flow_scheduler_config(pretrained: str | None) -> dict:
    """The family's flow scheduler config, its defaults filled in."""
    path = scheduler_config_file(pretrained)
    found = json.loads(path.read_text()) if path is not None else {}
    if found.get("shift") is None and found.get("flow_shift") is not None:  # the multistep flow schedulers (Sana, Wan)
        found["shift"] = found["flow_shift"]
    return {key: found.get(key, default) if found.get(key) is not None else default for key, default in SCHEDULER_DEFAULTS.items()}


def image_seq_len(shape: tuple[int, ...], patch: int) -> int:
    """Tokens of one example as the transformer sees it: latents (B, C, H, W) or (B, C, F, H, W) (or audio (B, C, T)) in
    ``patch`` × ``patch`` patches (Flux packs 2 × 2; the pipelines compute mu from the same count)."""
    spatial = shape[2:]
    if len(spatial) == 1:  # audio latents (B, C, T): one token per latent frame
        return spatial[0]
    frames = math.prod(spatial[:-2]) if len(spatial) > 2 else 1
    return frames * (spatial[-2] // patch) * (spatial[-1] // patch)


@dataclass(frozen=True)
class FlowTimesteps:
    """How a flow step draws its sigmas; ``describe`` says it in the run's log."""

    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    shift: float = 1.0  # 0 and 1 both mean unshifted (SimpleTuner counts 0 as off)
    auto_shift: bool = False
    base_seq_len: int = 256
    max_seq_len: int = 4096
    base_shift: float = 0.5
    max_shift: float = 1.15
    time_shift_type: str = "exponential"
    patch: int = 2
    source: str = "defaults"

    def u(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        scheme = "none" if self.weighting_scheme == "uniform" else self.weighting_scheme  # diffusers' name for uniform
        return compute_density_for_timestep_sampling(
            scheme, n, logit_mean=self.logit_mean, logit_std=self.logit_std, mode_scale=self.mode_scale,
            device=device, generator=generator,
        )

    def mu(self, seq_len: int) -> float:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        return calculate_shift(seq_len, self.base_seq_len, self.max_seq_len, self.base_shift, self.max_shift)

    def shifted(self, u: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """u → sigma as the family's scheduler shifts its sigmas."""
        if self.auto_shift:
            if shape is None:
                raise ValueError("flow_schedule_auto_shift needs the batch's latent shape to count its tokens")
            mu = self.mu(image_seq_len(tuple(shape), self.patch))
            if self.time_shift_type == "linear":
                return mu / (mu + (1 / u - 1))
            return math.exp(mu) / (math.exp(mu) + (1 / u - 1))  # the scheduler's time_shift(mu, 1.0, u)
        if self.shift in (0, 1):
            return u
        return self.shift * u / (1 + (self.shift - 1) * u)

    def sample(self, n: int, generator: torch.Generator, device, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return self.shifted(self.u(n, generator, device), shape)

    def describe(self) -> str:
        scheme = {
            "uniform": "uniform t",
            "logit_normal": f"logit-normal t (mean {self.logit_mean:g}, std {self.logit_std:g})",
            "mode": f"mode t (scale {self.mode_scale:g})",
        }[self.weighting_scheme]
        if self.auto_shift:
            shift = (f"shifted by resolution (mu from {self.base_seq_len}–{self.max_seq_len} tokens → "
                     f"{self.base_shift:g}–{self.max_shift:g})")
        elif self.shift in (0, 1):
            shift = "unshifted"
        else:
            shift = f"shifted by {self.shift:g}"
        return f"timesteps: {scheme}, {shift} ({self.source})"


def flow_timesteps(config, patch: int = 2) -> FlowTimesteps:
    """The run's flow timesteps: the config's keys, and for those it leaves unset the family's scheduler config."""
    import diffusers.training_utils  # noqa: F401 - imported at set-up, so the first step's time is a step's
    scheduler = flow_scheduler_config(config.pretrained_model_name_or_path)
    path = scheduler_config_file(config.pretrained_model_name_or_path)
    shift = config.flow_schedule_shift if config.flow_schedule_shift is not None else float(scheduler["shift"])
    auto = config.flow_schedule_auto_shift
    auto = bool(scheduler["use_dynamic_shifting"]) if auto is None else auto
    unset = config.flow_schedule_shift is None or config.flow_schedule_auto_shift is None
    if auto:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # noqa: F401 - as above

    source = "the config" if not unset else (f"unset keys from {path}" if path else "no scheduler config: unset keys unshifted")
    return FlowTimesteps(
        weighting_scheme=config.weighting_scheme, logit_mean=config.logit_mean, logit_std=config.logit_std,
        mode_scale=config.mode_scale, shift=shift, auto_shift=auto,
        base_seq_len=int(scheduler["base_image_seq_len"]), max_seq_len=int(scheduler["max_image_seq_len"]),
        base_shift=float(scheduler["base_shift"]), max_shift=float(scheduler["max_shift"]),
        time_shift_type=str(scheduler["time_shift_type"]), patch=patch, source=source,
    )


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-example loss weights of min-SNR-γ (Hang et al. 2023), as diffusers' training scripts compute them:
    min(SNR, γ) / SNR for epsilon, min(SNR, γ) / (SNR + 1) for v_prediction, min(SNR, γ) for sample."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    weights = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return weights / snr
    if prediction_type == "v_prediction":
        return weights / (snr + 1)
    return weights


def offset_noise(noise: torch.Tensor, offset: float, generator: torch.Generator) -> torch.Tensor:
    """Offset noise (Guttenberg 2023): one extra random value per example and channel, shared by all its
    pixels, so the model learns to shift an image's mean brightness. Drawn from the step's generator."""
    if not offset:
        return noise
    shape = noise.shape[:2] + (1,) * (noise.ndim - 2)
    return noise + offset * torch.randn(shape, generator=generator, device=noise.device)
