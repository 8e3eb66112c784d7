"""Block-probe benchmark (not a test): the wall time of one probe (load the data and the model, then
batches × noise levels forwards with every block captured, the cosines and the updates) on the demo
and on a small Flux, at the probe's default sizes (what "Map the blocks" runs) and at a tiny one.

The first probe of a process also pays for the imports (torch, diffusers): it is printed apart, and
the medians are of the probes after it. On a GPU the models run as a run's config says (bf16 here).

    python bench/probe.py               # default sizes, 3 rounds
    python bench/probe.py --rounds 1    # one round
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.families import flux  # noqa: E402
from trainer.cli import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES, DEFAULT_NOISE_LEVELS  # noqa: E402
from trainer.config import validate_config  # noqa: E402

SIZES = {"default": (DEFAULT_BATCHES, DEFAULT_BATCH_SIZE, DEFAULT_NOISE_LEVELS), "tiny": (1, 4, 2)}


def timed(config, sizes) -> tuple[float, dict]:
    from trainer.probe import probe

    batches, batch_size, levels = sizes
    start = time.perf_counter()
    result = probe(config, batches=batches, batch_size=batch_size, noise_levels=levels)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    import torch  # noqa: F401 - counted in the first probe's time, as a worker pays it

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir, _, label = flux(Path(tmp), tiny=True)
        models = {
            "demo (16 blocks × 96, 16² digits)": validate_config({"mixed_precision": "bf16"}),
            f"tiny {label}": validate_config({"model_family": "flux", "pretrained_model_name_or_path": str(model_dir),
                                              "instance_data_dir": str(data_dir), "resolution": 16, "mixed_precision": "bf16"}),
        }
        first, _ = timed(next(iter(models.values())), SIZES["tiny"])
        print(f"first probe of the process, imports included: {time.perf_counter() - start:.2f} s (the probe itself {first:.2f} s)")
        for name, config in models.items():
            for size, sizes in SIZES.items():
                times = [timed(config, sizes)[0] for _ in range(args.rounds)]
                b, n, levels = sizes
                print(f"{name}: {size} ({b} batches of {n} at {levels} noise levels) median {statistics.median(times):.2f} s "
                      f"of {args.rounds} (min {min(times):.2f}, max {max(times):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
