"""What the objective keys cost per step: the timestep draws (uniform, logit-normal, shifted, shifted by
resolution) and the batch draw of a bucketed dataset against one bucket, side by side in one run.

    PYTHONPATH=. python bench/objectives.py [--batch 32] [--repeats 2000]

Prints microseconds per call and each one's ratio to the plain uniform draw / one-bucket batch. A step of
the demo takes milliseconds, so these are what they add to it.
"""

import argparse
import time

import torch

from trainer.buckets import BucketedData
from trainer.data import LatentDataset
from trainer.objectives import DDPM, FlowMatching
from trainer.timesteps import FlowTimesteps


def per_call_us(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def dataset(n: int, shape: tuple[int, ...]) -> LatentDataset:
    latents = torch.randn(n, *shape)
    cond = {"prompt_embeds": torch.randn(n, 8, 32)}
    return LatentDataset(latents=latents, cond=cond, null_cond={"prompt_embeds": torch.zeros(1, 8, 32)},
                         val_latents=latents[:4], val_cond={k: v[:4] for k, v in cond.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch, 16, 64, 64)
    draws = {
        "uniform": FlowMatching(),
        "logit_normal": FlowMatching(FlowTimesteps(weighting_scheme="logit_normal")),
        "logit_normal, shift 3": FlowMatching(FlowTimesteps(weighting_scheme="logit_normal", shift=3.0)),
        "logit_normal, by resolution": FlowMatching(FlowTimesteps(weighting_scheme="logit_normal", auto_shift=True)),
    }
    base = None
    print(f"timestep draws, batch {args.batch}:")
    for name, objective in draws.items():
        us = per_call_us(lambda o=objective: o.timesteps(args.batch, generator, "cpu", shape=shape), args.repeats)
        base = base or us
        print(f"  {name:30s} {us:8.1f} µs  ×{us / base:.2f}")
    ddpm = DDPM({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                "cpu", snr_gamma=5.0)
    t = ddpm.timesteps(args.batch, generator, "cpu")
    pred, target = torch.randn(args.batch, 4, 32, 32), torch.randn(args.batch, 4, 32, 32)
    plain = DDPM({"num_train_timesteps": 1000}, "cpu")
    mse = per_call_us(lambda: plain.loss(pred, target, t), args.repeats)
    snr = per_call_us(lambda: ddpm.loss(pred, target, t), args.repeats)
    print(f"DDPM loss, batch {args.batch}: plain MSE {mse:.1f} µs, min-SNR weighted {snr:.1f} µs  ×{snr / mse:.2f}")
    one = dataset(600, (4, 32, 32))
    two = BucketedData([dataset(400, (4, 24, 40)), dataset(200, (4, 40, 24))], ["80x48", "48x80"])
    one_us = per_call_us(lambda: one.batch(args.batch, generator), args.repeats)
    two_us = per_call_us(lambda: two.batch(args.batch, generator), args.repeats)
    print(f"batch draw, batch {args.batch}: one bucket {one_us:.1f} µs, two buckets {two_us:.1f} µs  ×{two_us / one_us:.2f}")


if __name__ == "__main__":
    main()
