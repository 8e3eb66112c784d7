"""A run's set-up, one named step each, in the order the training loop calls them: the process and the
precision, the checkpoint to resume from, the model (and its LoRA), LayerSync with its capture and its
check, the optimizer, and the state restored from the checkpoint."""

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer import optimizers
from trainer.capture import HiddenStateCapture
from trainer.checkpoint import checkpoint_dirs, find_checkpoint, load_checkpoint
from trainer.config import ConfigError, TrainConfig
from trainer.layersync import LayerSync


def refuse_multi_process(config: TrainConfig, world_size: int) -> None:
    """A config that cannot train on the launched ranks stops here, before any step, with what to change."""
    from trainer.distributed import multi_process_problems

    problems = multi_process_problems(config, world_size)
    if problems:
        raise ConfigError(problems)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Precision:
    """How the loop computes: ``autocast`` around forwards (a no-op context in fp32), ``scaler`` scales
    the loss in fp16 (and passes it through otherwise), ``dtype`` the autocast dtype (None: fp32)."""

    dtype: torch.dtype | None
    autocast: AbstractContextManager
    scaler: torch.amp.GradScaler


def set_up_precision(config: TrainConfig, device: torch.device, log) -> Precision:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    if device.type == "cpu" and dtype is not None:
        log(f"mixed_precision {config.mixed_precision} is for GPUs: training in fp32 on the CPU", "warning")
        dtype = None
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log("mixed_precision bf16: this GPU has no bf16, training in fp16 with loss scaling instead", "warning")
        dtype = torch.float16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # cuDNN's fused attention failed in bf16 Flux training on an H100 (torch 2.11: "mha_graph.execute(...)
        # is_good() ... false"); the flash and memory-efficient kernels train the same models without it
        torch.backends.cuda.enable_cudnn_sdp(False)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return Precision(dtype, autocast, scaler)


def checkpoint_to_resume(config: TrainConfig, output_dir: Path, log) -> Path | None:
    """The checkpoint this run continues from, or None for a new run; a new run never writes over an old one."""
    if config.resume_from_checkpoint:
        found = find_checkpoint(output_dir, config.resume_from_checkpoint)
        if found is None:
            log("resume_from_checkpoint is 'latest' but there is no checkpoint yet: starting at step 0")
        return found
    if checkpoint_dirs(output_dir):
        raise ConfigError([(
            "output_dir",
            (f"{output_dir} already holds a run (checkpoints up to {checkpoint_dirs(output_dir)[-1].name}): "
             "set resume_from_checkpoint to 'latest' to continue it, or choose another output_dir"),
        )])
    return None


def set_up_model(config: TrainConfig, impl, device: torch.device, precision: Precision, log) -> nn.Module:
    """The family's model on the device in training mode, with its LoRA layers (over a quantized base if asked)
    and gradient checkpointing if asked."""
    model = impl.load_model(config)
    if config.model_type == "lora":
        # frozen weights in half precision before they reach the GPU: a 20B model does not fit there in fp32
        base_dtype = precision.dtype if device.type == "cuda" else None
        n_trainable = add_lora(config, impl, model, base_dtype)
        log(f"LoRA rank {config.lora_rank}: {n_trainable / 1e6:.3f}M trainable parameters on {', '.join(impl.lora_target_modules)}")
        if config.base_model_precision != "no_change":  # after the adapter is in: only the frozen layers shrink
            from trainer.quantize import quantize_base

            log(quantize_base(model, config.base_model_precision, device))
    model = model.to(device)
    model.train()
    if config.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ConfigError([("gradient_checkpointing", f"{type(model).__name__} does not support gradient checkpointing: turn it off")])
        model.enable_gradient_checkpointing()
    return model


def add_lora(config: TrainConfig, impl, model, base_dtype) -> int:
    """Freeze the model, store the frozen weights in ``base_dtype`` and wrap the family's attention
    projections with trainable fp32 LoRA layers (peft). Returns the number of trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    if base_dtype is not None:
        keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())  # e.g. Wan's time embedder and norms
        for name, param in model.named_parameters():
            if not any(part in keep for part in name.split(".")):
                param.data = param.data.to(base_dtype)
    torch.manual_seed(config.seed)  # the adapter's initial weights belong to the seed too
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha or config.lora_rank,
        target_modules=list(impl.lora_target_modules), init_lora_weights=True,
    )
    try:
        inject_adapter_in_model(lora, model)
    except ValueError as exc:
        raise ConfigError([("model_type", f"cannot add LoRA layers to this model ({exc}); use model_type full")]) from None
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return sum(p.numel() for p in trainable)


def set_up_layersync(config: TrainConfig, impl, objective, model, blocks, data, device: torch.device,
                     precision: Precision, log) -> tuple[LayerSync | None, HiddenStateCapture | None]:
    """The run's regularizer and the hooks that capture its blocks' outputs, checked on one forward;
    (None, None) when LayerSync is off."""
    layersync = LayerSync.from_config(config, depth=len(blocks))
    if not layersync:
        log("LayerSync off: training with the diffusion loss alone")
        return None, None
    capture = HiddenStateCapture(blocks, layersync.blocks)
    check_hidden_states(impl, objective, model, data, capture, layersync, device, precision.autocast)
    log(layersync.describe())
    if device.type == "cuda":
        why_not = layersync.compile(device)
        if why_not:
            log(f"LayerSync similarity not compiled, running eager: {why_not}", level="warning")
    return layersync, capture


def check_hidden_states(impl, objective, model, data, capture, layersync, device, autocast) -> None:
    """One forward on two examples before step 1, so a shape LayerSync cannot use stops the run early."""
    latents, cond = next(data.eval_batches(2))
    t = objective.eval_timesteps(len(latents), device)
    with torch.no_grad(), autocast, capture.capture() as states:
        impl.predict(model, latents, t, cond)
    try:
        missing = sorted(layersync.blocks - set(states))
        if missing:
            raise ValueError(f"blocks {missing} (counted from 0) did not run in the forward pass")
        layersync(states)
    except ValueError as exc:
        raise ConfigError([("layersync_student_block", f"LayerSync cannot use this model's hidden states: {exc}")]) from None
    finally:
        capture.release()


def make_optimizer(config: TrainConfig, params: list[nn.Parameter], device: torch.device) -> torch.optim.Optimizer:
    """The config's optimizer (adamw, adamw_8bit, adafactor or prodigy: trainer/optimizers.py) over ``params``."""
    return optimizers.make_optimizer(config, params, device)


def resume(checkpoint: Path | None, model, optimizer, ema, scaler, log, dist=None) -> int:
    """The step the run continues after: the checkpoint's, with its weights, optimizer state, EMA and loss
    scale restored in place; 0 for a new run. Every rank reads the same checkpoint (any world size wrote it)."""
    if checkpoint is None:
        return 0
    if dist is not None and dist.active and dist.sharded:
        from trainer.fsdp import load_sharded_checkpoint

        step = load_sharded_checkpoint(checkpoint, model, optimizer)
    else:
        step = load_checkpoint(checkpoint, model, optimizer, ema, scaler)
    log(f"resumed from {checkpoint} at step {step}")
    return step
