"""A stand-in for ``python -m trainer`` in scheduler tests: writes real events quickly, no torch.

Behaviour by FAKE_WORKER_MODE: "complete" (default) trains max_train_steps fake steps and ends;
"crash" writes a metric, prints a message and exits 1 without an end event; "wait" trains
until SIGTERM (twice a test's longest wait at most), then ends cancelled with exit code 130, as the trainer does;
"stubborn" trains as "wait" but ignores SIGTERM (a worker stuck in a step).
"""

import argparse
import json
import os
import signal
import sys
import time

from tests.utils.waiting import PATIENCE_S
from trainer.events import EventWriter


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    config = json.loads(open(args.config).read())
    mode = os.environ.get("FAKE_WORKER_MODE", "complete")
    stop = []
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else lambda *_: stop.append(True))
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, as the trainer: only rank 0 writes the events
        print(f"fake worker rank {os.environ['RANK']}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
        return 0
    events = EventWriter(args.output_dir)
    events.emit("status", status="starting")
    events.emit("status", status="running", step=0, max_train_steps=config["max_train_steps"])
    print(f"fake worker in mode {mode}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    if mode == "crash":
        events.emit("metric", step=1, loss=1.0, diffusion_loss=1.0)
        print("boom: the fake worker crashed on purpose", file=sys.stderr, flush=True)
        return 1
    # "wait" gives up by itself if a failed test never cancels it, long after a test's own waits would
    step, deadline = 0, time.monotonic() + 2 * PATIENCE_S
    while (mode in ("wait", "stubborn") and time.monotonic() < deadline) or step < config["max_train_steps"]:
        if stop:
            events.emit("end", status="cancelled", step=step)
            return 130
        step += 1
        events.emit("metric", step=step, loss=1.0 / step, diffusion_loss=1.0 / step, layersync_loss=-0.2,
                    layersync_similarity=0.5 + step / 1000, grad_norm=None)
        time.sleep(0.01)
    events.emit("end", status="completed", step=step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
