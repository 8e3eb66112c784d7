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
from trainer.distributed import Distributed, RankEvents, env_rank, env_world_size, micro_batches, scratch_dir, set_up_distributed
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

    def read(self, reduce=None) -> dict[str, float]:
        """The means since the last read; ``reduce`` averages the sums over the ranks first (every rank calls it)."""
        sums = self._sums / self.steps
        if reduce is not None:
            reduce(sums)
        means = dict(zip(self._names, sums.tolist(), strict=True))  # the one host sync of the interval
        self._sums.zero_()
        self.steps = 0
        return means


def train(config: TrainConfig, output_dir: str | Path, progress: bool = False, echo=None) -> int:
    """Train one run into ``output_dir``; returns the exit code (0 completed, 1 failed, 2 bad config,
    130 cancelled). Every outcome is also an ``end`` event in ``output_dir/events.jsonl``."""
    output_dir = Path(output_dir)
    # under torchrun only rank 0 writes the events file; the other ranks print their warnings and errors
    events = EventWriter(output_dir, echo=echo) if env_rank() == 0 else RankEvents(env_rank())
    samplers = Samplers()
    dist = Distributed()
    try:
        with StopRequest() as stop:
            refuse_multi_process(config, env_world_size())  # before joining a process group that cannot train it
            dist = set_up_distributed(pick_device())
            status, step = _train(config, output_dir, events, stop, samplers, progress, dist)
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
        dist.close()


def _train(config: TrainConfig, output_dir: Path, events: EventWriter, stop: StopRequest, samplers: Samplers,
           progress: bool, dist: Distributed):
    # ---- set up -----------------------------------------------------------------------------
    events.emit("status", status="starting", world_size=dist.world_size)
    for notice in config.notices():
        events.log(notice, level="warning")
    device = dist.device(pick_device())
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

    n_params = sum(p.numel() for p in model.parameters())  # counted before FSDP shards them
    def trial_backward():  # which parameters a step leaves without gradients (DDP must know)
        latents, cond = next(data.eval_batches(2))
        with autocast:
            pred = impl.predict(model, latents, objective.eval_timesteps(len(latents), device), cond)
        pred.float().mean().backward()

    forward_model = dist.wrap(model, config.distributed, trial_backward)  # the model itself, DDP, or sharded (FSDP2)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params, device)
    ema = EMA(model, config.ema_decay) if config.use_ema else None
    start_step = resume(resume_from, model, optimizer, ema, scaler, events.log, dist)
    if guard is not None and resume_from is not None:  # the guard judges on as the unbroken run would
        guard.load_state_dict(checkpoint_state(resume_from).get(GUARD_STATE) or {})
    run_config = config_to_json(config)
    accumulation = config.gradient_accumulation_steps
    events.log(f"{config.model_family} model: {len(blocks)} blocks, {n_params / 1e6:.2f}M parameters, on {device}")
    if dist.active or accumulation > 1:
        per_rank = config.train_batch_size // dist.world_size
        how = f"{dist.world_size} processes ({dist.backend}, {config.distributed}), {per_rank} examples each"
        how = how if dist.active else "1 process"
        events.log(f"world size {dist.world_size}: {how}; {config.train_batch_size * accumulation} examples per optimizer step "
                   f"({accumulation} micro-batch{'es' if accumulation > 1 else ''} of {config.train_batch_size})")
    events.emit("status", status="running", step=start_step, max_train_steps=config.max_train_steps,
                device=describe_device(device), world_size=dist.world_size)  # the run page shows the device

    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=config.max_train_steps, initial=start_step, unit="step", dynamic_ncols=True, disable=None)
    means = RunningMeans()
    interval_start, interval_paused = time.perf_counter(), 0.0
    step = start_step
    last_checkpoint = start_step if resume_from else None
    stopping = False  # every rank's agreed stop (dist.stop_agreed): a SIGTERM to any rank stops all after one step

    # ---- the loop ---------------------------------------------------------------------------
    generator = torch.Generator(device=device)
    zero = torch.zeros((), device=device)
    while step < config.max_train_steps and not stopping:
        step += 1

        # batch: its examples, caption dropout, noise and timesteps all follow from (seed, step), the whole
        # step's (every micro-batch, every rank's share) drawn at once, so neither changes which examples train
        generator.manual_seed(step_seed(config.seed, step))
        latents, cond = data.batch(config.train_batch_size * accumulation, generator)
        drop = torch.rand(len(latents), generator=generator, device=device) < config.caption_dropout_probability
        cond = data.drop(cond, drop)  # caption dropout: the null condition, for classifier-free guidance
        noise = objective.noise(latents, generator)  # with the offset noise, when set
        t = objective.timesteps(len(latents), generator, device, shape=latents.shape)  # the family's density and shift
        x_t = objective.noisy(latents, noise, t)
        target = objective.target(latents, noise, t)

        # the weight in force (the schedule's, 0 once stopped); on a step that logs, the span meter measures how
        # much the blocks between student and teacher change their input (on the step's last micro-batch)
        logs = step % config.logging_steps == 0 or step == config.max_train_steps
        weight = lambda_at(config, step, guard.stopped_at if guard else None) if layersync else 0.0
        if layersync and step == config.layersync_stop_step:
            events.log(f"layersync_stop_step {step}: LayerSync's weight is 0 from this step on; the similarity "
                       "is still measured and logged")

        optimizer.zero_grad(set_to_none=True)
        values = {}
        for part in micro_batches(len(latents), accumulation, dist):
            # forward (this rank's share of one micro-batch; DDP syncs gradients on a step's last micro-batch only)
            # the hooks keep the student and teacher outputs of this forward only
            with dist.no_sync(last=part.last):
                with autocast, capture.capture() if capture else nullcontext() as states, \
                        span_meter.measure(logs and part.last) if span_meter else nullcontext():
                    pred = impl.predict(forward_model, x_t[part.rows], t[part.rows], {k: v[part.rows] for k, v in cond.items()})

                # losses
                # the MSE, min-SNR weighted when snr_gamma is set
                diffusion_loss = objective.loss(pred, target[part.rows], t[part.rows])
                if layersync:
                    layersync_loss, similarity, pair_sims = layersync(states, weight)
                    capture.release()  # each micro-batch's activations are freed before the next forward
                    loss = diffusion_loss + layersync_loss
                else:
                    layersync_loss = zero
                    loss = diffusion_loss

                # backward: each micro-batch adds its share of the step's mean
                scaler.scale(loss / accumulation).backward()
            micro = {"loss": loss, "diffusion_loss": diffusion_loss, "layersync_loss": layersync_loss}
            if layersync:
                micro["layersync_similarity"] = similarity
                if len(pair_sims) > 1:
                    for (student, teacher), pair_similarity in zip(layersync.user_pairs, pair_sims, strict=True):
                        micro[f"layersync_similarity/{student}-{teacher}"] = pair_similarity
            for name, value in micro.items():
                values[name] = values.get(name, zero) + value.detach() / accumulation
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

        stopping = dist.stop_agreed(stop.requested)

        # log: running means by name on the device, read back only here (averaged over the ranks) and reset
        if grad_norm is not None:
            values["grad_norm"] = dist.full(grad_norm)
        means.add(values)
        if bar is not None:
            bar.update(1)
        if step % config.logging_steps == 0 or step == config.max_train_steps or stopping:
            step_time = (time.perf_counter() - interval_start - interval_paused) / means.steps
            mean = means.read(dist.mean_)
            # every key in every metric event: layersync_similarity / grad_norm are None with LayerSync / clipping off
            metric = {"step": step, **dict.fromkeys(STEP_METRICS), **mean, "lr": lr, "step_time": step_time}
            span = span_meter.read() if span_meter else None
            span = None if span is None else dist.mean_(span.float().clone()).item()  # every rank's guard judges the same value
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
            if dist.is_main or config.distributed == "fsdp":  # sharded weights: every rank takes part in the forwards
                where = output_dir if dist.is_main else scratch_dir(dist)
                validate(config, impl, objective, model, ema, data, where, events, step, device, autocast, samplers)

        # checkpoint (a cancel also checkpoints, so nothing trained is lost); rank 0 writes it, the others wait
        if (config.checkpointing_steps and step % config.checkpointing_steps == 0) or step == config.max_train_steps or stopping:
            checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config, events, dist, guard)
            last_checkpoint = step
        interval_paused += time.perf_counter() - paused_at

    if bar is not None:
        bar.close()
    if capture is not None:
        capture.remove()
    if span_meter is not None:
        span_meter.remove()
    if stopping and step < config.max_train_steps:
        if last_checkpoint != step:
            checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config, events, dist, guard)
        events.log(f"stopped on request after step {step}; resume with resume_from_checkpoint='latest'")
        return "cancelled", step
    # ---- the final weights, alone and ready to load (trainer/checkpoint.py: save_final); rank 0 writes them
    if dist.is_main and not dist.sharded:
        events.log(f"final weights in {save_final(output_dir, step, model, run_config, ema).relative_to(output_dir)}/")
    elif dist.is_main:  # FSDP: the gathered weights are the last checkpoint's
        events.log(f"final weights in checkpoints/step_{step:07d}/transformer/ (distributed fsdp writes no final/ folder)")
    dist.barrier()
    return "completed", step


def loop_state(guard) -> dict:
    """What a checkpoint keeps of the loop beyond weights and optimizer: the collapse guard's judgement."""
    return {GUARD_STATE: guard.state_dict()} if guard is not None else {}


def checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config, events, dist: Distributed, guard=None) -> None:
    """Rank 0 writes the checkpoint between two barriers: no rank trains on while it is written, nor reads it early."""
    dist.barrier()
    if not dist.weights_agree(model):
        raise RuntimeError(f"the {dist.world_size} processes hold different weights at step {step}: they no longer "
                           "train one model (a rank's gradients were not averaged); nothing was checkpointed")
    if config.distributed == "fsdp" and dist.active:
        from trainer.fsdp import save_sharded_checkpoint

        path = save_sharded_checkpoint(output_dir, step, model, optimizer, run_config, config.checkpoints_total_limit, dist)
    elif dist.is_main:
        path = save_checkpoint(output_dir, step, model, optimizer, run_config, ema, scaler, config.checkpoints_total_limit,
                               state=loop_state(guard))
    if dist.is_main:
        events.emit("checkpoint", step=step, path=str(path.relative_to(output_dir)), world_size=dist.world_size)
    dist.barrier()


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
