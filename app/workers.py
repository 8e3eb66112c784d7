"""Worker processes: start one detached, tell whether it lives, ask it to stop; and the slots.

A worker runs in its own session (process group) so it outlives a server restart and a Ctrl-C
in the server's terminal, and so a cancel reaches every process it spawned.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import trainer

WORKER_LOG = "worker.log"
CONFIG_FILE = "config.json"
# the worker must import the same trainer package the server validated the config with
TRAINER_ROOT = str(Path(trainer.__file__).resolve().parent.parent)
# workers this process started, by pid: polling them reaps them (a zombie would look alive)
_children: dict[int, subprocess.Popen] = {}


def detect_gpus() -> list[str]:
    """Visible NVIDIA GPU ids, found without torch: CUDA_VISIBLE_DEVICES, else the driver's list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    try:
        return [str(index) for index in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def slot_devices(worker_slots: int | None, gpus: str | None) -> list[str]:
    """One slot per GPU ("0", "1", …), or one "cpu" slot; ``worker_slots`` caps or repeats them."""
    devices = [gpu.strip() for gpu in gpus.split(",") if gpu.strip()] if gpus else detect_gpus()
    devices = devices or ["cpu"]
    count = len(devices) if worker_slots is None else worker_slots
    # more slots than GPUs: several small runs share a GPU, round robin
    return [devices[index % len(devices)] for index in range(count)]


def launch(command: list[str], *, config: dict, output_dir: str | Path, device: str) -> int:
    """Write ``output_dir/config.json`` and start the worker on ``device``; returns its pid."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TRAINER_ROOT, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # the log tail shows what the worker printed, as it printed it
    if device != "cpu":
        env["CUDA_VISIBLE_DEVICES"] = device
    argv = [*command, "--config", str(config_path), "--output-dir", str(output_dir), "--no-progress"]
    with open(output_dir / WORKER_LOG, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    _children[process.pid] = process
    return process.pid


def pid_alive(pid: int) -> bool:
    """Whether the worker lives: polled when this process started it, else probed with signal 0
    (a worker adopted from an earlier server)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def stop_worker(pid: int) -> None:
    """SIGTERM to the worker's process group: it finishes the step, checkpoints and ends ``cancelled``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # already gone: the scheduler records how it ended
