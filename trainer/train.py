"""The training loop, in one function that reads top to bottom: set up (trainer/setup.py), then per
step a batch noised by the family's objective (flow matching or DDPM, trainer/objectives.py), the
diffusion loss plus the LayerSync term, the optimizer step, and the logs, samples and checkpoints."""

import math
import signal
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from trainer.checkpoint import checkpoint_state, save_checkpoint, save_final
from trainer.config import ConfigError, TrainConfig, config_to_json
from trainer.devices import describe as describe_device
from trainer.ema import EMA
from trainer.events import EventWriter
from trainer.guard import GUARD_STATE, set_up_guard
from trainer.models import implementation
from trainer.objectives import objective_for
from trainer.sampling import Samplers, fixed_noise_loss
from trainer.schedules import describe_schedule, lambda_at
from trainer.setup import (
    checkpoint_to_resume,
    make_optimizer,
    pick_device,
    refuse_multi_process,
    resume,
    set_up_layersync,
    set_up_model,
    set_up_precision,
)

EXIT_COMPLETED, EXIT_FAILED, EXIT_CONFIG, EXIT_CANCELLED = 0, 1, 2, 130
# the means of a metric event (with "layersync_similarity/S-T" per pair when there are several)
STEP_METRICS = ("loss", "diffusion_loss", "layersync_loss", "layersync_similarity", "grad_norm")


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
    """Learning rate of a step (1-based): a linear warmup over ``lr_warmup_steps`` (none when 0, whatever
    the schedule), then the schedule. Linear and cosine decay from the peak at the first step after the
    warmup towards 0, which the step after the last would reach: no step trains at a learning rate of 0."""
    warmup = config.lr_warmup_steps
    if step <= warmup:
        return config.learning_rate * step / warmup
    if config.lr_scheduler in ("constant", "constant_with_warmup"):
        return config.learning_rate
    progress = (step - 1 - warmup) / (config.max_train_steps - warmup)
    if config.lr_scheduler == "linear":
        return config.learning_rate * (1 - progress)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))  # cosine


class RunningMeans:
    """The means of each step's metrics since the last log, by name. The sums stay on the device, so a
    step adds without waiting for the GPU; ``read`` brings them to the host once per log and resets."""

    def __init__(self):
        self._names: list[str] = []
        self._sums: torch.Tensor | None = None
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """One step's values (0-dim tensors); every step of a run gives the same names."""
        stacked = torch.stack([value.detach() for value in values.values()])
        if self._sums is None:
            self._names, self._sums = list(values), torch.zeros_like(stacked)
        elif list(values) != self._names:
            raise ValueError(f"metrics {list(values)} differ from the earlier steps' {self._names}")
        self._sums += stacked
        self.steps += 1

    def read(self) -> dict[str, float]:
        means = dict(zip(self._names, (self._sums / self.steps).tolist(), strict=True))  # the one host sync of the interval
        self._sums.zero_()
        self.steps = 0
        return means


def train(config: TrainConfig, output_dir: str | Path, progress: bool = False, echo=None) -> int:
    """Train one run into ``output_dir``; returns the exit code (0 completed, 1 failed, 2 bad config,
    130 cancelled). Every outcome is also an ``end`` event in ``output_dir/events.jsonl``."""
    output_dir = Path(output_dir)
    events = EventWriter(output_dir, echo=echo)
    samplers = Samplers()
    try:
        with StopRequest() as stop:
            status, step = _train(config, output_dir, events, stop, samplers, progress)
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
        samplers.release()  # the validation pipelines, and the model and VAE they hold, end with the run
        events.close()


def _train(config: TrainConfig, output_dir: Path, events: EventWriter, stop: StopRequest, samplers: Samplers,
           progress: bool):
    # ---- set up -----------------------------------------------------------------------------
    events.emit("status", status="starting")
    refuse_multi_process()
    for notice in config.notices():
        events.log(notice, level="warning")
    device = pick_device()
    precision = set_up_precision(config, device, events.log)
    autocast, scaler = precision.autocast, precision.scaler
    resume_from = checkpoint_to_resume(config, output_dir, events.log)

    impl = implementation(config.model_family)
    data = impl.load_data(config, device, events.log).to(device)
    how = "held-out" if data.held_out else "training (nothing held out of your data; fixed noise and timesteps)"
    events.log(f"data: {len(data)} training examples; val_diffusion_loss on {data.val_size} {how} examples")
    model = set_up_model(config, impl, device, precision, events.log)
    objective = objective_for(impl, config, device)
    events.log(objective.describe())
    blocks = impl.blocks(model)
    layersync, capture = set_up_layersync(config, impl, objective, model, blocks, data, device, precision, events.log)
    span_meter, guard = set_up_guard(config, layersync, blocks, events.log)
    if layersync and describe_schedule(config):
        events.log(describe_schedule(config))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params, device)
    ema = EMA(model, config.ema_decay) if config.use_ema else None
    start_step = resume(resume_from, model, optimizer, ema, scaler, events.log)
    if guard is not None and resume_from is not None:  # the guard judges on as the unbroken run would
        guard.load_state_dict(checkpoint_state(resume_from).get(GUARD_STATE) or {})
    run_config = config_to_json(config)
    n_params = sum(p.numel() for p in model.parameters())
    events.log(f"{config.model_family} model: {len(blocks)} blocks, {n_params / 1e6:.2f}M parameters, on {device}")
    events.emit("status", status="running", step=start_step, max_train_steps=config.max_train_steps,
                device=describe_device(device))  # the run page shows the device

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.max_train_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None)
    means = RunningMeans()
    interval_start, interval_paused = time.perf_counter(), 0.0
    step = start_step
    last_checkpoint = start_step if resume_from else None

    # ---- the loop ---------------------------------------------------------------------------
    generator = torch.Generator(device=device)
    zero = torch.zeros((), device=device)
    while step < config.max_train_steps and not stop.requested:
        step += 1

        # batch: its examples, caption dropout, noise and timesteps all follow from (seed, step)
        generator.manual_seed(step_seed(config.seed, step))
        latents, cond = data.batch(config.train_batch_size, generator)
        drop = torch.rand(len(latents), generator=generator, device=device) < config.caption_dropout_probability
        cond = data.drop(cond, drop)  # caption dropout: the null condition, for classifier-free guidance
        noise = objective.noise(latents, generator)  # with the offset noise, when set
        t = objective.timesteps(len(latents), generator, device, shape=latents.shape)  # the family's density and shift
        x_t = objective.noisy(latents, noise, t)
        target = objective.target(latents, noise, t)

        # forward: the hooks keep the student and teacher outputs of this forward only; on a step that logs,
        # the span meter also measures how much the blocks between them change their input
        logs = step % config.logging_steps == 0 or step == config.max_train_steps
        with autocast, capture.capture() if capture else nullcontext() as states, \
                span_meter.measure(logs) if span_meter else nullcontext():
            pred = impl.predict(model, x_t, t, cond)

        # losses
        diffusion_loss = objective.loss(pred, target, t)  # the MSE, min-SNR weighted when snr_gamma is set
        if layersync:
            weight = lambda_at(config, step, guard.stopped_at if guard else None)  # the schedule's, 0 once stopped
            if step == config.layersync_stop_step:
                events.log(f"layersync_stop_step {step}: LayerSync's weight is 0 from this step on; the similarity "
                           "is still measured and logged")
            layersync_loss, similarity, pair_sims = layersync(states, weight)
            capture.release()
            loss = diffusion_loss + layersync_loss
        else:
            layersync_loss = zero
            loss = diffusion_loss

        # backward
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm > 0 else None

        # step
        lr = lr_at(config, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)

        # log: running means by name on the device, read back only here and reset after each log
        values = {"loss": loss, "diffusion_loss": diffusion_loss, "layersync_loss": layersync_loss}
        if layersync:
            values["layersync_similarity"] = similarity
            if len(pair_sims) > 1:
                for (student, teacher), pair_similarity in zip(layersync.user_pairs, pair_sims, strict=True):
                    values[f"layersync_similarity/{student}-{teacher}"] = pair_similarity
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        means.add(values)
        if bar is not None:
            bar.update(1)
        if step % config.logging_steps == 0 or step == config.max_train_steps or stop.requested:
            step_time = (time.perf_counter() - interval_start - interval_paused) / means.steps
            mean = means.read()
            # every key in every metric event: layersync_similarity / grad_norm are None with LayerSync / clipping off
            metric = {"step": step, **dict.fromkeys(STEP_METRICS), **mean, "lr": lr, "step_time": step_time}
            span = span_meter.read() if span_meter else None
            span = None if span is None else span.item()
            metric |= {"layersync_lambda": weight if layersync else None, "layersync_span_update": span}
            events.emit("metric", **metric)
            # once the weight is 0 (a stop), LayerSync no longer pulls: what the span does then is not its doing
            warning = guard.observe(step, span) if guard and weight > 0 else None
            if warning:
                events.log(warning, level="warning")
            if not math.isfinite(mean["loss"]):
                raise FloatingPointError(
                    f"the loss became {mean['loss']} by step {step}: lower learning_rate or layersync_lambda, "
                    "or raise max_grad_norm's clipping (a smaller value)"
                )
            if bar is not None:
                similarity_text = f"{mean['layersync_similarity']:.3f}" if layersync else "-"
                bar.set_postfix(loss=f"{mean['diffusion_loss']:.4f}", sim=similarity_text)
            interval_start, interval_paused = time.perf_counter(), 0.0

        # sample and held-out loss (their time is kept out of step_time)
        paused_at = time.perf_counter()
        if config.validation_steps and (step % config.validation_steps == 0 or step == config.max_train_steps):
            validate(config, impl, objective, model, ema, data, output_dir, events, step, device, autocast, samplers)

        # checkpoint (a cancel also checkpoints, so nothing trained is lost)
        if (config.checkpointing_steps and step % config.checkpointing_steps == 0) or step == config.max_train_steps or stop.requested:
            path = save_checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config.checkpoints_total_limit,
                                   state=loop_state(guard))
            last_checkpoint = step
            events.emit("checkpoint", step=step, path=str(path.relative_to(output_dir)))
        interval_paused += time.perf_counter() - paused_at

    if bar is not None:
        bar.close()
    if capture is not None:
        capture.remove()
    if span_meter is not None:
        span_meter.remove()
    if stop.requested and step < config.max_train_steps:
        if last_checkpoint != step:
            path = save_checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config.checkpoints_total_limit,
                                   state=loop_state(guard))
            events.emit("checkpoint", step=step, path=str(path.relative_to(output_dir)))
        events.log(f"stopped on request after step {step}; resume with resume_from_checkpoint='latest'")
        return "cancelled", step
    # ---- the final weights, alone and ready to load (trainer/checkpoint.py: save_final)
    events.log(f"final weights in {save_final(output_dir, step, model, run_config, ema).relative_to(output_dir)}/")
    return "completed", step


def loop_state(guard) -> dict:
    """What a checkpoint keeps of the loop beyond weights and optimizer: the collapse guard's judgement."""
    return {GUARD_STATE: guard.state_dict()} if guard is not None else {}


def validate(config, impl, objective, model, ema, data, output_dir, events, step, device, autocast, samplers) -> None:
    """The fixed-noise validation loss and the family's samples (fixed prompts and seed), with EMA weights if kept."""
    model.eval()
    path = None
    with ema.applied(model) if ema is not None else nullcontext(), autocast:
        val_loss = fixed_noise_loss(impl, objective, model, data, batch_size=config.train_batch_size)
        if impl.sample is not None:
            path = impl.sample(config, model, data, device, output_dir / "samples" / f"step_{step:07d}", samplers)
        extra = impl.sample_metrics(config, model, data, device) if impl.sample_metrics is not None else {}
    model.train()
    events.emit("metric", step=step, val_diffusion_loss=val_loss, **extra)
    if path is not None:
        events.emit("sample", step=step, path=str(path.relative_to(output_dir)), prompts=data.prompts)
