"""The optimizers a run can train with, and the optional package each needs.

The table at the top is torch-free (the config checks, the form and the server read it); ``make_optimizer``
builds one and imports torch and the optimizer's package only when called.

- ``adamw``: torch's AdamW (fused on a GPU), the default.
- ``adamw_8bit``: bitsandbytes' AdamW8bit: both moments kept in 8 bits with a block-wise scale, about a
  quarter of AdamW's state (tensors under 4096 elements keep 32-bit state, as bitsandbytes decides).
- ``adafactor``: torch's Adafactor: a factored second moment (a row and a column per matrix), no first
  moment; its own relative step size, so ``learning_rate`` is an upper bound (torch's default 1e-2).
- ``prodigy``: prodigyopt's Prodigy: Adam whose step size it estimates itself; ``learning_rate`` then
  multiplies that estimate, so 1.0 (its authors' advice, and the default when unset) means "as estimated".
"""

import importlib.metadata
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerKind:
    label: str
    module: str | None  # the package it imports (None: torch alone)
    extra: str | None  # the pip extra of this project that installs it
    pip_name: str | None = None


OPTIMIZERS = {
    "adamw": OptimizerKind("AdamW (torch)", None, None),
    "adamw_8bit": OptimizerKind("8-bit AdamW (bitsandbytes)", "bitsandbytes", "adamw8bit", "bitsandbytes"),
    "adafactor": OptimizerKind("Adafactor (torch)", None, None),
    "prodigy": OptimizerKind("Prodigy (prodigyopt)", "prodigyopt", "prodigy", "prodigyopt"),
}
PRODIGY_DEFAULT_LR = 1.0
ADAFACTOR_MIN_TORCH = (2, 5)  # torch.optim.Adafactor is new in torch 2.5

# SimpleTuner's names for the same optimizers, so its config files work as they are
ALIASES = {
    "adamw_bf16": "adamw", "optimi-adamw": "adamw",
    "bnb-adamw8bit": "adamw_8bit", "adamw8bit": "adamw_8bit", "bnb-adamw-8bit": "adamw_8bit",
    "optimi-adafactor": "adafactor", "prodigyopt": "prodigy",
}


def canonical(name):
    """An optimizer name as a config may give it (ours or SimpleTuner's) → ours; anything else unchanged."""
    if isinstance(name, str):
        key = name.strip().lower()
        if key in ALIASES or key in OPTIMIZERS:
            return ALIASES.get(key, key)
    return name


def install_hint(extra: str, pip_name: str) -> str:
    return f"pip install 'layersync-studio[{extra}]' (or pip install {pip_name})"


def _torch_version() -> tuple[int, int] | None:
    try:
        major, minor = importlib.metadata.version("torch").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def optimizer_problem(name: str) -> str | None:
    """Why this environment cannot build the optimizer (its package is not installed), or None. Torch-free:
    it only looks the package up, so the server can say it before the run is queued."""
    kind = OPTIMIZERS[name]
    if kind.module is not None and importlib.util.find_spec(kind.module) is None:
        return (f"optimizer {name} needs the {kind.pip_name} package, which is not installed: "
                f"{install_hint(kind.extra, kind.pip_name)}, or choose optimizer adamw")
    version = _torch_version()
    if name == "adafactor" and version is not None and version < ADAFACTOR_MIN_TORCH:
        return (f"optimizer adafactor is torch's own, new in torch 2.5; this torch is {version[0]}.{version[1]}: "
                "upgrade torch, or choose optimizer adamw")
    return None


def make_optimizer(config, params, device):
    """The run's optimizer over ``params``, with the config's learning rate, betas, weight decay and epsilon
    where the optimizer has them. A package that is missing or fails to import is a ConfigError naming it."""
    import torch

    from trainer.problems import ConfigError

    name = config.optimizer
    problem = optimizer_problem(name)
    if problem:
        raise ConfigError([("optimizer", problem)])
    betas = (config.adam_beta1, config.adam_beta2)
    common = dict(lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=betas, eps=config.adam_epsilon, fused=device.type == "cuda", **common)
    if name == "adafactor":
        return torch.optim.Adafactor(params, **common)
    try:
        if name == "adamw_8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(params, betas=betas, eps=config.adam_epsilon, **common)
        import prodigyopt

        return prodigyopt.Prodigy(params, betas=betas, eps=config.adam_epsilon, **common)
    except (ImportError, RuntimeError) as exc:  # installed, but built for another CUDA or torch
        kind = OPTIMIZERS[name]
        raise ConfigError([("optimizer", (
            f"optimizer {name}: {kind.pip_name} is installed but cannot run here ({type(exc).__name__}: {exc}); "
            f"reinstall it for this torch ({install_hint(kind.extra, kind.pip_name)}), or choose optimizer adamw"))]) from None
