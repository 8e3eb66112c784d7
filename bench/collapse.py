"""Collapse-guard measurement (not a test): how does the span update of the blocks between student and
teacher move with LayerSync on and off, on the demo? The figures behind trainer/guard.py's thresholds.

Arms run one after another from the same seed (paired: same weights, batches, noise): LayerSync at each
weight asked, and the baseline as LayerSync with ``layersync_stop_step 1`` (weight 0 from the first step,
so it trains exactly as with LayerSync off while the similarity and the span update are still measured).
Prints each arm's span update and similarity at a few steps, its best span, its lowest span after the
guard armed as a share of the best, and the guard's warnings with the thresholds of trainer/guard.py.

    python bench/collapse.py --steps 600 --weights 0.2,1.0 --student 4 --teacher 12
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.config import validate_config  # noqa: E402
from trainer.events import read_events  # noqa: E402
from trainer.guard import ARM_AT, CollapseGuard  # noqa: E402
from trainer.train import train  # noqa: E402


def run_arm(out: Path, args, weight: float | None) -> list[dict]:
    config = {
        "output_dir": str(out), "max_train_steps": args.steps, "train_batch_size": args.batch_size,
        "logging_steps": args.logging_steps, "validation_steps": 0, "checkpointing_steps": 0, "seed": args.seed,
        "layersync_enabled": True, "layersync_student_block": args.student, "layersync_teacher_block": args.teacher,
        "layersync_lambda": weight or 0.2,
    }
    if weight is None:
        config["layersync_stop_step"] = 1
    assert train(validate_config(config), out) == 0
    return [e for e in read_events(out) if e["event"] == "metric" and "loss" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--weights", default="0.2")
    parser.add_argument("--student", type=int, default=4)
    parser.add_argument("--teacher", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arms = {"baseline": None} | {f"lambda {w}": float(w) for w in args.weights.split(",")}
    marks = sorted({args.steps // 10, args.steps // 4, args.steps // 2, 3 * args.steps // 4, args.steps})
    print(f"demo, blocks {args.student} → {args.teacher}, {args.steps} steps, batch {args.batch_size}, seed {args.seed}")
    print("arm".ljust(12) + "".join(f"  span@{m}".rjust(11) for m in marks) + "   best  low/best  sim@end  warnings")
    with tempfile.TemporaryDirectory() as tmp:
        for name, weight in arms.items():
            metrics = run_arm(Path(tmp) / name.replace(" ", "_"), args, weight)
            span = {m["step"]: m["layersync_span_update"] for m in metrics}
            guard, warnings = CollapseGuard(), []
            low = None
            for m in metrics:
                if guard.observe(m["step"], m["layersync_span_update"]):
                    warnings.append(m["step"])
                if guard.best is not None and guard.best >= ARM_AT:
                    low = min(low or 1e9, m["layersync_span_update"] / guard.best)
            near = [min(span, key=lambda s, m=m: abs(s - m)) for m in marks]
            print(name.ljust(12) + "".join(f"{span[s]:11.4f}" for s in near)
                  + f"{guard.best:8.4f}{(low if low is not None else float('nan')):9.2f}"
                  + f"{metrics[-1]['layersync_similarity']:9.3f}  {warnings or 'none'}", flush=True)


if __name__ == "__main__":
    main()
