"""Worker processes: start one detached, tell whether it lives, ask it to stop; and the slots.

A worker runs in its own session (process group) so it outlives a server restart and a Ctrl-C
in the server's terminal, and so a cancel reaches every process it spawned.
"""

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

import trainer

WORKER_LOG = "worker.log"
CONFIG_FILE = "config.json"
# the worker must import the same trainer package the server validated the config with
TRAINER_ROOT = str(Path(trainer.__file__).resolve().parent.parent)
# workers this process started, by pid: polling them reaps them (a zombie would look alive)
_children: dict[int, subprocess.Popen] = {}
_exit_codes: dict[int, int] = {}  # how reaped workers ended, until the scheduler asks
HAS_PROC = os.path.exists("/proc/self/stat")


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


class Worker(NamedTuple):
    pid: int
    started: int | None  # start time in clock ticks after boot; None where there is no /proc


def write_config(output_dir: str | Path, config: dict) -> Path:
    """Write ``output_dir/config.json`` (raises OSError when the folder cannot be written)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2))
    return config_path


def launch(command: list[str], *, config_path: Path, device: str) -> Worker:
    """Start the worker on ``device`` for the run whose config is ``config_path``."""
    output_dir = config_path.parent
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
    _exit_codes.pop(process.pid, None)  # an earlier worker's, whose pid this one was given
    stat = _proc_stat(process.pid)
    return Worker(process.pid, stat[1] if stat else None)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) from /proc/<pid>/stat; None when there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count fields after its last ")"
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])  # fields 3 (state) and 22 (starttime)


def reap_children() -> None:
    """Poll every worker this process started: the ended ones are reaped (no zombies pile up) and
    their exit codes kept until the scheduler asks; a worker whose run ended normally is never asked for."""
    for pid, child in list(_children.items()):
        code = child.poll()
        if code is not None:
            _exit_codes[pid] = code
            _children.pop(pid, None)


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether the worker lives: polled when this process started it; else (a worker adopted from an
    earlier server) looked up in /proc, where a zombie is dead and a process whose start time is not
    ``started`` took over the pid of a worker that is gone."""
    child = _children.get(pid)
    if child is not None:
        code = child.poll()
        if code is None:
            return True
        _exit_codes[pid] = code
        _children.pop(pid, None)
        return False
    if HAS_PROC:
        stat = _proc_stat(pid)
        return stat is not None and stat[0] != "Z" and (started is None or stat[1] == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def exit_code(pid: int) -> int | None:
    """How a worker this process started ended (negative: the signal that killed it); None when unknown."""
    return _exit_codes.pop(pid, None)


def stop_worker(pid: int, started: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Signal the worker's process group: SIGTERM makes it finish the step, checkpoint and end
    ``cancelled``; SIGKILL ends it at once. Nothing is sent once the pid is no longer the worker's."""
    if not pid_alive(pid, started):
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # already gone: the scheduler records how it ended
