"""The training loop: flow matching with LayerSync, in one function that reads top to bottom."""

import math
import os
import signal
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.capture import HiddenStateCapture
from trainer.checkpoint import checkpoint_dirs, find_checkpoint, load_checkpoint, save_checkpoint
from trainer.config import ConfigError, TrainConfig, config_to_json
from trainer.ema import EMA
from trainer.encode import release_samplers
from trainer.events import EventWriter
from trainer.layersync import LayerSync
from trainer.models import implementation
from trainer.objectives import objective_for
from trainer.sampling import fixed_noise_loss

EXIT_COMPLETED, EXIT_FAILED, EXIT_CONFIG, EXIT_CANCELLED = 0, 1, 2, 130


class StopRequest:
    """SIGTERM / SIGINT ask the loop to stop after the current step (then it checkpoints).

    A repeated SIGTERM (a retried cancel, a launcher forwarding it) changes nothing; a second
    Ctrl-C is a person who wants out now, checkpoint or not."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (a library caller): no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def step_seed(seed: int, step: int) -> int:
    """Batches and noise of a step depend on (seed, step) only: a resumed run repeats them exactly."""
    return (seed * 1_000_003 + step) % (2**63)


def lr_at(config: TrainConfig, step: int) -> float:
    """Learning rate of a step (1-based): linear warmup, then the schedule."""
    warmup = config.lr_warmup_steps
    if config.lr_scheduler == "constant_with_warmup" and warmup == 0:
        warmup = max(1, config.max_train_steps // 20)
    if step <= warmup:
        return config.learning_rate * step / warmup
    if config.lr_scheduler in ("constant", "constant_with_warmup"):
        return config.learning_rate
    progress = (step - warmup) / max(1, config.max_train_steps - warmup)
    if config.lr_scheduler == "linear":
        return config.learning_rate * (1 - progress)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))  # cosine


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


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


def train(config: TrainConfig, output_dir: str | Path, progress: bool = False, echo=None) -> int:
    """Train one run into ``output_dir``; returns the exit code (0 completed, 1 failed, 2 bad config,
    130 cancelled). Every outcome is also an ``end`` event in ``output_dir/events.jsonl``."""
    output_dir = Path(output_dir)
    events = EventWriter(output_dir, echo=echo)
    try:
        with StopRequest() as stop:
            status, step = _train(config, output_dir, events, stop, progress)
        events.emit("end", status=status, step=step)
        return EXIT_CANCELLED if status == "cancelled" else EXIT_COMPLETED
    except KeyboardInterrupt:
        reason = "stopped at once on a second interrupt, without a final checkpoint"
        events.emit("end", status="cancelled", reason=reason)
        return EXIT_CANCELLED
    except ConfigError as exc:
        events.emit("error", kind="config", message=str(exc), errors=[list(e) for e in exc.errors])
        events.emit("end", status="failed", reason=str(exc))
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - every failure must end the events file with its reason
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.OutOfMemoryError):
            message = f"out of memory: {exc}; lower train_batch_size or turn on gradient_checkpointing"
        events.emit("error", kind=type(exc).__name__, message=message, traceback=traceback.format_exc())
        events.emit("end", status="failed", reason=message)
        return EXIT_FAILED
    finally:
        release_samplers()
        events.close()


def _train(config: TrainConfig, output_dir: Path, events: EventWriter, stop: StopRequest, progress: bool):
    # ---- set up -----------------------------------------------------------------------------
    events.emit("status", status="starting")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # every rank would train its own copy and write the same events and checkpoints
        raise ConfigError([("", (
            f"launched as {world_size} processes (WORLD_SIZE={world_size}), but this trainer runs one process per "
            "run: start it without torchrun / accelerate launch (one GPU per run; the server gives each run its own)"
        ))])
    for notice in config.notices():
        events.log(notice, level="warning")
    device = pick_device()
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    if device.type == "cpu" and autocast_dtype is not None:
        events.log(f"mixed_precision {config.mixed_precision} is for GPUs: training in fp32 on the CPU", "warning")
        autocast_dtype = None
    if autocast_dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        events.log("mixed_precision bf16: this GPU has no bf16, training in fp16 with loss scaling instead", "warning")
        autocast_dtype = torch.float16
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        # cuDNN's fused attention failed in bf16 Flux training on an H100 (torch 2.11: "mha_graph.execute(...)
        # is_good() ... false"); the flash and memory-efficient kernels train the same models without it
        torch.backends.cuda.enable_cudnn_sdp(False)
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    resume_from = None
    if config.resume_from_checkpoint:
        resume_from = find_checkpoint(output_dir, config.resume_from_checkpoint)
        if resume_from is None:
            events.log("resume_from_checkpoint is 'latest' but there is no checkpoint yet: starting at step 0")
    elif checkpoint_dirs(output_dir):
        raise ConfigError([(
            "output_dir",
            f"{output_dir} already holds a run (checkpoints up to {checkpoint_dirs(output_dir)[-1].name}): "
            "set resume_from_checkpoint to 'latest' to continue it, or choose another output_dir",
        )])

    impl = implementation(config.model_family)
    data = impl.load_data(config, device, events.log).to(device)
    how = "held-out" if data.held_out else "training (nothing held out of your data; fixed noise and timesteps)"
    events.log(f"data: {len(data)} training examples; val_diffusion_loss on {len(data.val_latents)} {how} examples")
    model = impl.load_model(config)
    if config.model_type == "lora":
        # frozen weights in half precision before they reach the GPU: a 20B model does not fit there in fp32
        base_dtype = autocast_dtype if device.type == "cuda" else None
        n_trainable = add_lora(config, impl, model, base_dtype)
        events.log(f"LoRA rank {config.lora_rank}: {n_trainable / 1e6:.3f}M trainable parameters on {', '.join(impl.lora_target_modules)}")
    model = model.to(device)
    model.train()
    if config.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ConfigError([("gradient_checkpointing", f"{type(model).__name__} does not support gradient checkpointing: turn it off")])
        model.enable_gradient_checkpointing()
    objective = objective_for(impl, config, device)
    blocks = impl.blocks(model)
    layersync = LayerSync.from_config(config, depth=len(blocks))
    capture = HiddenStateCapture(blocks, layersync.blocks) if layersync else None
    if layersync:
        check_hidden_states(impl, objective, model, data, capture, layersync, device, autocast)
        events.log(layersync.describe())
        if device.type == "cuda":
            why_not = layersync.compile(device)
            if why_not:
                events.log(f"LayerSync similarity not compiled, running eager: {why_not}", level="warning")
    else:
        events.log("LayerSync off: training with the diffusion loss alone")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=device.type == "cuda",
    )
    ema = EMA(model, config.ema_decay) if config.use_ema else None
    start_step = load_checkpoint(resume_from, model, optimizer, ema, scaler) if resume_from else 0
    if resume_from:
        events.log(f"resumed from {resume_from} at step {start_step}")
    run_config = config_to_json(config)
    n_params = sum(p.numel() for p in model.parameters())
    events.log(f"{config.model_family} model: {len(blocks)} blocks, {n_params / 1e6:.2f}M parameters, on {device}")
    events.emit("status", status="running", step=start_step, max_train_steps=config.max_train_steps)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.max_train_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None)
    # running sums on the device (no sync per step): loss, diffusion, layersync, similarity, grad norm
    sums = torch.zeros(5, device=device)
    pair_sums = torch.zeros(len(layersync.pairs) if layersync else 0, device=device)
    interval_steps, interval_start, interval_paused = 0, time.perf_counter(), 0.0
    step = start_step
    last_checkpoint = start_step if resume_from else None

    # ---- the loop ---------------------------------------------------------------------------
    generator = torch.Generator(device=device)
    zero = torch.zeros((), device=device)
    while step < config.max_train_steps and not stop.requested:
        step += 1
        generator.manual_seed(step_seed(config.seed, step))
        latents, cond = data.batch(config.train_batch_size, generator)
        drop = torch.rand(len(latents), generator=generator, device=device) < config.caption_dropout_probability
        cond = data.drop(cond, drop)  # caption dropout: the null condition, for classifier-free guidance
        noise = torch.randn(latents.shape, generator=generator, device=device)
        t = objective.timesteps(len(latents), generator, device)
        x_t = objective.noisy(latents, noise, t)
        target = objective.target(latents, noise, t)

        # forward: the hooks keep the student and teacher outputs of this forward only
        with autocast, capture.capture() if capture else nullcontext() as states:
            pred = impl.predict(model, x_t, t, cond)

        # losses
        diffusion_loss = F.mse_loss(pred.float(), target.float())
        if layersync:
            layersync_loss, similarity, pair_sims = layersync(states)
            capture.release()
            loss = diffusion_loss + layersync_loss
        else:
            layersync_loss = similarity = zero
            loss = diffusion_loss

        # backward
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        if config.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        else:
            grad_norm = zero

        # step
        lr = lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)

        # log: .item() only here, averages over the interval, reset after each log
        sums += torch.stack([loss.detach(), diffusion_loss.detach(), layersync_loss.detach(), similarity.detach(), grad_norm.detach()])
        if layersync and len(pair_sims) > 1:
            pair_sums += torch.stack([s.detach() for s in pair_sims])
        interval_steps += 1
        if bar is not None:
            bar.update(1)
        if step % config.logging_steps == 0 or step == config.max_train_steps or stop.requested:
            values = (sums / interval_steps).tolist()
            metric = {
                "step": step,
                "loss": values[0],
                "diffusion_loss": values[1],
                "layersync_loss": values[2],
                "layersync_similarity": values[3] if layersync else None,
                "grad_norm": values[4] if config.max_grad_norm > 0 else None,
                "lr": lr,
                "step_time": (time.perf_counter() - interval_start - interval_paused) / interval_steps,
            }
            if layersync and len(layersync.pairs) > 1:
                for (s, t_pair), value in zip(layersync.user_pairs, (pair_sums / interval_steps).tolist()):
                    metric[f"layersync_similarity/{s}-{t_pair}"] = value
            events.emit("metric", **metric)
            if not math.isfinite(values[0]):
                raise FloatingPointError(
                    f"the loss became {values[0]} by step {step}: lower learning_rate or layersync_lambda, "
                    "or raise max_grad_norm's clipping (a smaller value)"
                )
            if bar is not None:
                bar.set_postfix(loss=f"{values[1]:.4f}", sim=f"{values[3]:.3f}" if layersync else "-")
            sums.zero_()
            pair_sums.zero_()
            interval_steps, interval_start, interval_paused = 0, time.perf_counter(), 0.0

        # sample and held-out loss (their time is kept out of step_time)
        paused_at = time.perf_counter()
        if config.validation_steps and (step % config.validation_steps == 0 or step == config.max_train_steps):
            validate(config, impl, objective, model, ema, data, output_dir, events, step, device, autocast)

        # checkpoint (a cancel also checkpoints, so nothing trained is lost)
        if (config.checkpointing_steps and step % config.checkpointing_steps == 0) or step == config.max_train_steps or stop.requested:
            path = save_checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config.checkpoints_total_limit)
            last_checkpoint = step
            events.emit("checkpoint", step=step, path=str(path.relative_to(output_dir)))
        interval_paused += time.perf_counter() - paused_at

    if bar is not None:
        bar.close()
    if capture is not None:
        capture.remove()
    if stop.requested and step < config.max_train_steps:
        if last_checkpoint != step:
            path = save_checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config.checkpoints_total_limit)
            events.emit("checkpoint", step=step, path=str(path.relative_to(output_dir)))
        events.log(f"stopped on request after step {step}; resume with resume_from_checkpoint='latest'")
        return "cancelled", step
    return "completed", step


def validate(config, impl, objective, model, ema, data, output_dir, events, step, device, autocast) -> None:
    """The fixed-noise validation loss and the family's samples (fixed prompts and seed), with EMA weights if kept."""
    model.eval()
    path = None
    with ema.applied(model) if ema is not None else nullcontext(), autocast:
        val_loss = fixed_noise_loss(impl, objective, model, data, batch_size=config.train_batch_size)
        if impl.sample is not None:
            path = impl.sample(config, model, data, device, output_dir / "samples" / f"step_{step:07d}")
    model.train()
    events.emit("metric", step=step, val_diffusion_loss=val_loss)
    if path is not None:
        events.emit("sample", step=step, path=str(path.relative_to(output_dir)), prompts=data.prompts)
