"""Overhead benchmark (not a test): what does our loop, and LayerSync in it, cost per step?

Four ways, alternating in one process, from the same saved weights and the same batch size:
our loop with LayerSync on, our loop with it off, a bare PyTorch loop (below, ~30 lines), and our loop
with LayerSync on but without the span meter (layersync_span_update, measured on logging steps only) —
its ratio to the first way is the span metric's cost.
Step times are per 10-step interval (each ends in a sync); the first interval of each run is
warm-up and dropped. Prints the medians, the ratios on/off and ours-off/bare, and peak memory
(GPU allocator peak; on the CPU, the resident-set growth is too coarse to attribute, so n/a).

    python bench/overhead.py                                   # CPU, the demo model
    python bench/overhead.py --hidden-size 384 --heads 6 --resolution 32 --batch-size 256 \
        --mixed-precision bf16                                 # a DiT-S-sized model on a GPU
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trainer.train as loop  # noqa: E402
from trainer.config import validate_config  # noqa: E402
from trainer.data import load_digits_dataset  # noqa: E402
from trainer.events import read_events  # noqa: E402
from trainer.models.demo_dit import DemoDiT  # noqa: E402
from trainer.train import train  # noqa: E402

INTERVAL = 10


def bare_loop(model_dir, steps, batch_size, resolution, lr, autocast_dtype, checkpointing) -> list[float]:
    """The reference: flow matching with AdamW and clipping, nothing else. Returns interval step times."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DemoDiT.from_pretrained(model_dir).to(device).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    data = load_digits_dataset(resolution)
    images, labels = data.latents.to(device), data.cond["class_labels"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=device.type == "cuda")
    amp = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    times, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(len(images), (batch_size,), device=device)
        x1, y = images[index], labels[index]
        y = torch.where(torch.rand(batch_size, device=device) < 0.1, model.config.num_classes, y)  # CFG label drop
        noise = torch.randn_like(x1)
        sigma = torch.rand(batch_size, device=device)
        x_t = (1 - sigma.view(-1, 1, 1, 1)) * x1 + sigma.view(-1, 1, 1, 1) * noise
        with amp:
            pred = model(x_t, sigma * 1000, y)
        loss = F.mse_loss(pred.float(), noise - x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % INTERVAL == 0:
            loss.item()  # one sync per interval, as our loop's logging does
            times.append((time.perf_counter() - start) / INTERVAL)
            start = time.perf_counter()
    return times[1:]


def our_loop(model_dir, out_dir, steps, batch_size, resolution, lr, precision, checkpointing, layersync,
             span=True) -> list[float]:
    real_guard = loop.set_up_guard
    if not span:  # LayerSync on, the span meter and the guard left out
        loop.set_up_guard = lambda *args, **kwargs: (None, None)
    try:
        return _our_loop(model_dir, out_dir, steps, batch_size, resolution, lr, precision, checkpointing, layersync)
    finally:
        loop.set_up_guard = real_guard


def _our_loop(model_dir, out_dir, steps, batch_size, resolution, lr, precision, checkpointing, layersync) -> list[float]:
    config = validate_config({
        "pretrained_model_name_or_path": str(model_dir),
        "output_dir": str(out_dir),
        "max_train_steps": steps,
        "train_batch_size": batch_size,
        "resolution": resolution,
        "learning_rate": lr,
        "mixed_precision": precision,
        "gradient_checkpointing": checkpointing,
        "logging_steps": INTERVAL,
        "validation_steps": 0,
        "checkpointing_steps": 0,
        "layersync_enabled": layersync,
        **({"layersync_student_block": 8, "layersync_teacher_block": 16} if layersync else {}),
    })
    # the final checkpoint is written after the last interval is timed, so it is not counted
    assert train(config, out_dir) == 0, read_events(out_dir)[-1]
    metrics = [e for e in read_events(out_dir) if e["event"] == "metric" and "step_time" in e]
    return [m["step_time"] for m in metrics][1:]


def span_cost(model_dir, steps, batch_size, resolution, logging_steps=INTERVAL) -> dict:
    """The span meter's cost measured step by step: three kinds of training step interleaved in one loop (no
    meter, the meter's hooks installed but unarmed as on most steps, armed as on a logging step), so the
    machine's load drifts over all three alike. Returns the median step times and the cost per step at
    ``logging_steps`` (one armed step in that many)."""
    import trainer.guard as guard_module
    from trainer.guard import SpanMeter, span_blocks
    from trainer.models import demo

    # the meter's own work, timed inside it (robust to the machine's load, unlike a difference of step times)
    inside = {"s": 0.0, "calls": 0}
    real_update = guard_module.relative_update

    def timed_update(h_in, h_out):
        start = time.perf_counter()
        value = real_update(h_in, h_out)
        sync()
        inside["s"] += time.perf_counter() - start
        inside["calls"] += 1
        return value

    guard_module.relative_update = timed_update

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DemoDiT.from_pretrained(model_dir).to(device).train()
    blocks = demo.blocks(model)
    span = span_blocks([(7, 15)])  # the demo's 8 → 16, counted from 0
    data = load_digits_dataset(resolution)
    images, labels = data.latents.to(device), data.cond["class_labels"].to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {"no meter": [], "unarmed": [], "armed": []}
    meter = SpanMeter(blocks, span)
    for step in range(3 * steps + 3):
        kind = list(times)[step % 3]
        if kind == "no meter":
            meter.remove()
        index = torch.randint(len(images), (batch_size,), device=device)
        sigma = torch.rand(batch_size, device=device)
        x1, noise = images[index], torch.randn_like(images[index])
        sync()
        start = time.perf_counter()
        with meter.measure(kind == "armed"):
            pred = model((1 - sigma.view(-1, 1, 1, 1)) * x1 + sigma.view(-1, 1, 1, 1) * noise, sigma * 1000, labels[index])
        loss = F.mse_loss(pred, noise - x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kind == "armed":
            meter.read().item()  # read back as the loop does on a logging step
        sync()
        if step >= 3:  # the first round warms up
            times[kind].append(time.perf_counter() - start)
        if kind == "no meter":
            meter = SpanMeter(blocks, span)
    guard_module.relative_update = real_update
    median = {kind: statistics.median(t) for kind, t in times.items()}
    base = median["no meter"]
    norms_s = inside["s"] / (steps + 1)  # per armed step (the warm-up round's included)
    per_step = ((logging_steps - 1) * median["unarmed"] + median["armed"]) / logging_steps
    return {"median_s": median, "hooks_ratio": median["unarmed"] / base, "armed_ratio": median["armed"] / base,
            "per_step_ratio": per_step / base, "logging_steps": logging_steps, "steps": steps,
            "norms_s_per_armed_step": norms_s, "norms_share_per_step": norms_s / logging_steps / base}


def peak_memory(fn) -> tuple[list[float], float | None]:
    if not torch.cuda.is_available():
        return fn(), None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times = fn()
    return times, torch.cuda.max_memory_allocated() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=96)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--span-cost", action="store_true",
                        help="only the span meter's cost, step by step (interleaved: steady figures on a loaded machine)")
    args = parser.parse_args()
    if args.span_cost:
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            DemoDiT(sample_size=args.resolution, hidden_size=args.hidden_size, num_layers=args.layers,
                    num_attention_heads=args.heads).save_pretrained(Path(tmp) / "model")
            cost = span_cost(Path(tmp) / "model", args.steps, args.batch_size, args.resolution)
        m = cost["median_s"]
        print(f"span meter, {args.layers} blocks × {args.hidden_size}, batch {args.batch_size}, {args.steps} steps of each kind, "
              f"interleaved: no meter {m['no meter'] * 1000:.2f} ms, hooks unarmed {m['unarmed'] * 1000:.2f} ms "
              f"({cost['hooks_ratio']:.3f}), armed {m['armed'] * 1000:.2f} ms ({cost['armed_ratio']:.3f}); per step with "
              f"one armed step in {cost['logging_steps']}: {cost['per_step_ratio']:.4f} (goal ≤ 1.01); the norms themselves "
              f"{cost['norms_s_per_armed_step'] * 1000:.3f} ms per armed step, {cost['norms_share_per_step']:.4%} of a step")
        if args.json:
            Path(args.json).write_text(json.dumps(cost))
        return

    lr = 1e-3
    autocast_dtype = torch.bfloat16 if args.mixed_precision == "bf16" and torch.cuda.is_available() else None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        torch.manual_seed(0)
        DemoDiT(sample_size=args.resolution, hidden_size=args.hidden_size, num_layers=args.layers,
                num_attention_heads=args.heads).save_pretrained(model_dir)
        ways = {
            "ours, LayerSync on": lambda r: our_loop(model_dir, Path(tmp) / f"on{r}", args.steps, args.batch_size,
                                                     args.resolution, lr, args.mixed_precision, args.gradient_checkpointing, True),
            "ours, LayerSync off": lambda r: our_loop(model_dir, Path(tmp) / f"off{r}", args.steps, args.batch_size,
                                                      args.resolution, lr, args.mixed_precision, args.gradient_checkpointing, False),
            "bare PyTorch loop": lambda r: bare_loop(model_dir, args.steps, args.batch_size, args.resolution, lr,
                                                     autocast_dtype, args.gradient_checkpointing),
            "ours, on, no span meter": lambda r: our_loop(model_dir, Path(tmp) / f"nospan{r}", args.steps, args.batch_size,
                                                          args.resolution, lr, args.mixed_precision,
                                                          args.gradient_checkpointing, True, span=False),
        }
        times = {name: [] for name in ways}
        peaks = {name: None for name in ways}
        names = list(ways)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order so drift hits each way alike
                t, peak = peak_memory(lambda name=name, r=r: ways[name](r))
                times[name] += t
                peaks[name] = max(peaks[name] or 0, peak) if peak is not None else None

    median = {name: statistics.median(t) for name, t in times.items()}
    on, off, bare, no_span = (median[n] for n in names)
    print(f"device {device}; model {args.layers} blocks × {args.hidden_size}, {args.resolution}px, batch "
          f"{args.batch_size}, {args.mixed_precision}, gradient checkpointing {args.gradient_checkpointing}; "
          f"{args.rounds} rounds × {args.steps} steps, medians over {len(times[names[0]])} intervals")
    for name in names:
        mem = f"{peaks[name]:.0f} MiB" if peaks[name] is not None else "n/a (CPU)"
        print(f"  {name:22s} {median[name] * 1000:8.2f} ms/step   peak memory {mem}")
    print(f"  ratio on/off       {on / off:.3f}   (goal ≤ 1.02)")
    print(f"  ratio ours-off/bare {off / bare:.3f}   (goal ≤ 1.03)")
    print(f"  ratio span on/off  {on / no_span:.3f}   (goal ≤ 1.01: layersync_span_update's cost)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "args": vars(args), "median_s": median,
                                               "peak_mib": peaks, "on_off": on / off, "ours_bare": off / bare,
                                               "span_on_off": on / no_span}))


if __name__ == "__main__":
    main()
