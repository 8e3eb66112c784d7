"""LayerSync's weight over a run: a schedule from ``layersync_lambda`` to ``layersync_lambda_end`` after a
linear warm-up from 0, and the stops that set it to 0 for the rest of the run (``layersync_stop_step``,
HASTE's early stop, and the collapse guard's stop). Torch-free: a pure function of the config and the step.
"""

import math

SCHEDULES = ("constant", "linear", "cosine")


def lambda_at(config, step: int, stopped_at: int | None = None) -> float:
    """The LayerSync weight in force at ``step`` (1-based), 0.0 when LayerSync is off.

    Warm-up: steps 1..W rise linearly to ``layersync_lambda`` (W = ``layersync_lambda_warmup_steps``,
    none when 0). Then ``constant`` keeps ``layersync_lambda``; ``linear`` and ``cosine`` go from it at
    the first step after the warm-up to exactly ``layersync_lambda_end`` at the last step. From
    ``layersync_stop_step`` on, and from ``stopped_at`` on (the guard's stop), the weight is 0."""
    if not config.layersync_enabled:
        return 0.0
    stop = min((s for s in (config.layersync_stop_step, stopped_at) if s is not None), default=None)
    if stop is not None and step >= stop:
        return 0.0
    start, end, warmup = config.layersync_lambda, config.layersync_lambda_end, config.layersync_lambda_warmup_steps
    if step <= warmup:
        return start * step / warmup
    if config.layersync_lambda_schedule == "constant":
        return start
    span = config.max_train_steps - warmup - 1
    progress = min(1.0, (step - warmup - 1) / span) if span > 0 else 1.0
    if config.layersync_lambda_schedule == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine


def describe_schedule(config) -> str | None:
    """The weight's schedule in words for the run's log; None for a constant weight without warm-up or stop."""
    parts = []
    if config.layersync_lambda_warmup_steps:
        parts.append(f"warm-up from 0 over {config.layersync_lambda_warmup_steps} steps")
    if config.layersync_lambda_schedule != "constant":
        parts.append(f"{config.layersync_lambda_schedule} from {config.layersync_lambda:g} to "
                     f"{config.layersync_lambda_end:g} at step {config.max_train_steps}")
    if config.layersync_stop_step is not None:
        parts.append(f"0 from step {config.layersync_stop_step} on (layersync_stop_step)")
    return "LayerSync weight: " + "; ".join(parts) if parts else None
