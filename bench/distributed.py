"""Distributed benchmark (not a test): step time of one process vs N gloo ranks (or NCCL on GPUs) at the same
global batch, side by side in one run, from the same saved weights and config.

Each way is a real launch of the trainer (``python -m trainer``, then ``torchrun --standalone --nproc_per_node
N -m trainer``); step times are the metric events' ``step_time`` (rank 0's, per logging interval), the first
interval dropped as warm-up. Prints the medians and the ratio N ranks / one process, and checks that both
ways logged the same losses. On a 2-core CPU the ratio is honestly small, or below 1 when other work shares the cores.

    python bench/distributed.py                       # 1 vs 2 gloo ranks on the CPU, the demo at batch 32
    python bench/distributed.py --ranks 8 --batch-size 256 --hidden-size 384   # a GPU box
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.utils.factories import fast_config, make_tiny_demo_model  # noqa: E402
from trainer.events import read_events  # noqa: E402


def launch(folder: Path, name: str, config: dict, ranks: int, threads: int) -> list[dict]:
    out = folder / name
    path = folder / f"{name}.json"
    path.write_text(json.dumps(dict(config, output_dir=str(out))))
    head = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                "--nproc_per_node", str(ranks)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([*head, "-m", "trainer", "--config", str(path), "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return [e for e in read_events(out) if e["event"] == "metric" and "loss" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads a process (1: on a shared CPU, spinning threads slow everyone)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating launches of each way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_tiny_demo_model(folder / "model", hidden_size=args.hidden_size)
        config = fast_config(model, folder / "unused", max_train_steps=args.steps, train_batch_size=args.batch_size,
                             logging_steps=10, validation_steps=0, checkpointing_steps=0,
                             mixed_precision=args.mixed_precision)
        times_one, times_many = [], []
        for round_ in range(args.rounds):
            one = launch(folder, f"one{round_}", config, 1, args.threads)
            many = launch(folder, f"many{round_}", config, args.ranks, args.threads)
            times_one += [m["step_time"] for m in one[1:]]
            times_many += [m["step_time"] for m in many[1:]]
    t_one, t_many = statistics.median(times_one), statistics.median(times_many)
    worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(one, many, strict=True))
    print(f"global batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, {os.cpu_count()} CPU cores, "
          f"{args.threads} thread(s) a process")
    print(f"1 process:        {t_one * 1000:8.1f} ms/step")
    print(f"{args.ranks} ranks:          {t_many * 1000:8.1f} ms/step")
    print(f"speed-up {t_one / t_many:.2f}x (time ratio {args.ranks} ranks / 1 process = {t_many / t_one:.2f})")
    print(f"losses: largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
