"""Memory benchmark (not a test): peak memory and step time of one model with each memory knob, side by side.

Every row trains the same demo DiT (built from a config, saved once) on the built-in digits for a few steps
through the real loop (trainer.train), each in a fresh process so that one row's peak is not another's:

    baseline (AdamW, full fine-tune) | gradient accumulation (4 micro-batches of a quarter: the same examples
    per optimizer step; skipped when this tree has no gradient_accumulation_steps) | 8-bit AdamW | Adafactor |
    Prodigy | gradient checkpointing | LoRA (fp32 base) | LoRA, int8 base | LoRA, fp8 base

Peak memory: on a GPU the allocator's peak (torch.cuda.max_memory_allocated); on the CPU the process's peak
resident set (ru_maxrss) minus its resident set just before training, after torch, diffusers and every optional
package were imported (so no row pays for an import the others do not), with glibc's mmap threshold fixed (see
MALLOC) so that freed tensors leave the resident set. Step time: the median of the metric
events' step_time, the first interval (warm-up) dropped. A row whose package is missing says so.

    python bench/memory.py                                  # CPU: a 32.5M-parameter DiT, batch 16
    python bench/memory.py --hidden-size 1152 --layers 28 --heads 16 --batch-size 64 --steps 20   # DiT-XL-sized, GPU
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCUMULATION = 4
ROWS = [
    ("baseline: AdamW, full", {}),
    (f"gradient accumulation {ACCUMULATION} × batch/{ACCUMULATION}", {"gradient_accumulation_steps": ACCUMULATION}),
    ("8-bit AdamW (bitsandbytes)", {"optimizer": "adamw_8bit"}),
    ("Adafactor", {"optimizer": "adafactor"}),
    ("Prodigy", {"optimizer": "prodigy"}),
    ("gradient checkpointing", {"gradient_checkpointing": True}),
    ("LoRA r16, fp32 base", {"model_type": "lora"}),
    ("LoRA r16, int8 base (torchao)", {"model_type": "lora", "base_model_precision": "int8"}),
    ("LoRA r16, fp8 base (torchao)", {"model_type": "lora", "base_model_precision": "fp8"}),
]
OPTIONAL = ("bitsandbytes", "prodigyopt", "torchao")
# glibc serves a freed large block to later allocations but keeps it resident, and raises its mmap threshold
# as large blocks come and go: the peak resident set would then count memory long freed. A fixed threshold
# maps every tensor over 128 KiB on its own and unmaps it when freed, so the resident set follows live memory.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict) -> dict:
    """One row, in this process: train, then report the peak and the step times."""
    import torch

    for name in OPTIONAL:  # imported by every row alike, so the baseline holds them all
        if importlib.util.find_spec(name):
            __import__(name)
    from trainer.config import ConfigError, validate_config
    from trainer.events import read_events
    from trainer.models.demo_dit import DemoDiT  # noqa: F401  (diffusers, before the baseline is read)
    from trainer.train import train

    out = Path(spec["out"])
    try:
        config = validate_config(spec["config"])
    except ConfigError as exc:
        return {"skipped": "; ".join(message for _, message in exc.errors)}
    cuda = torch.cuda.is_available()
    start = rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    code = train(config, out)
    events = read_events(out)
    if code != 0:
        return {"skipped": next((e["reason"] for e in events if e["event"] == "end"), f"exit {code}")}
    times = [e["step_time"] for e in events if e["event"] == "metric" and "step_time" in e][1:]
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start
    return {"peak_mib": peak, "step_s": statistics.median(times), "device": "cuda" if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-size", type=int, default=384)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", help="run only the rows whose label contains this text (e.g. baseline)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from trainer.config import FIELDS
    from trainer.models.demo_dit import DemoDiT

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model = DemoDiT(sample_size=args.resolution, hidden_size=args.hidden_size, num_layers=args.layers,
                        num_attention_heads=args.heads)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(model_dir)
        del model
        print(f"demo DiT {args.hidden_size}×{args.layers} ({n_params / 1e6:.1f}M parameters), {args.resolution} px, "
              f"batch {args.batch_size}, {args.steps} steps, LayerSync on (blocks 4→8), one fresh process per row\n")
        print("| configuration | peak memory (MiB) | vs baseline | step time (s) | vs baseline |")
        print("|---|---:|---:|---:|---:|")
        base = None
        for i, (label, overrides) in enumerate(ROWS):
            if args.only and args.only.lower() not in label.lower():
                continue
            if "gradient_accumulation_steps" in overrides and "gradient_accumulation_steps" not in FIELDS:
                print(f"| {label} | – | – | – | – |  (skipped: this tree has no gradient_accumulation_steps yet)")
                continue
            batch = args.batch_size // overrides.get("gradient_accumulation_steps", 1)
            config = dict(
                pretrained_model_name_or_path=str(model_dir), resolution=args.resolution, output_dir=str(Path(tmp) / f"run{i}"),
                max_train_steps=args.steps, train_batch_size=batch, logging_steps=2, validation_steps=0,
                checkpointing_steps=0, layersync_enabled=True, layersync_student_block=4, layersync_teacher_block=8,
                learning_rate=1e-4, **overrides,
            )
            spec = json.dumps({"config": config, "out": config["output_dir"]})
            done = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, **MALLOC})
            try:
                result = json.loads(done.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"skipped": f"the row's process failed: {done.stderr.strip()[-300:]}"}
            if "skipped" in result:
                print(f"| {label} | – | – | – | – |  (skipped: {result['skipped'][:200]})")
                continue
            base = base or result
            print(f"| {label} | {result['peak_mib']:.0f} | {result['peak_mib'] / base['peak_mib']:.2f}× "
                  f"| {result['step_s']:.3f} | {result['step_s'] / base['step_s']:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
