"""Worker processes: start one detached, tell whether it lives, ask it to stop; and the slots.

A worker runs in its own session (process group) so it outlives a server restart and a Ctrl-C
in the server's terminal, and so a cancel reaches every process it spawned.

A worker is known by its pid and its start time (``Worker.started``, stored as ``Run.pid_started``):
psutil's create_time in whole milliseconds since the epoch. The system gives a dead worker's pid to
a later process, and a pid whose process started at another time is not the worker. create_time is
the boot time plus the ticks since boot, so it moves by whole seconds when the wall clock is stepped:
it is compared within STARTED_TOLERANCE_MS. Whether a run's worker lives is told for sure by its
folder lock (trainer.runlock), which the scheduler asks as well.
"""

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

import psutil

import trainer

WORKER_LOG = "worker.log"
CONFIG_FILE = "config.json"
# the worker must import the same trainer package the server validated the config with
TRAINER_ROOT = str(Path(trainer.__file__).resolve().parent.parent)
STARTED_TOLERANCE_MS = 2000  # a clock step or the seconds' rounding of the boot time; a reused pid starts later
# a start time below this (September 2001 in milliseconds) was stored by an older server, in clock
# ticks after boot: the pid alone decides for it
MIN_STARTED_MS = 10**12
# torchrun's wait for its ranks to stop after a SIGTERM before it kills them (its own default, 30 s, is shorter
# than a large checkpoint takes to write); a cancel is bounded by the server's cancel grace anyway
LAUNCHER_SHUTDOWN_SECONDS = 600


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


def split_slots(slot: str | None) -> list[str]:
    """The slots a run holds, as stored in Run.slot: "0", "0,1", "cpu,cpu"."""
    return [part for part in (slot or "").split(",") if part]


def join_slots(slots: list[str]) -> str:
    return ",".join(slots)


def slots_for(free: list[str], devices: list[str], processes: int) -> tuple[list[str] | None, str | None]:
    """The free slots a run of ``processes`` processes takes: (slots, None), (None, None) while too few are
    free, or (None, why) when this server can never run it.

    On GPUs each process needs its own GPU (NCCL refuses two ranks on one device), so a run takes that many
    free slots of distinct GPUs. On a CPU-only server the processes are gloo ranks sharing the CPU: a run
    takes one slot a process, and every slot when it asks for more than the server has."""
    if processes <= 1:
        return (free[:1] or None), None
    if all(device == "cpu" for device in devices):
        need = min(processes, len(devices))
        return (free[:need] if len(free) >= need else None), None
    gpus = list(dict.fromkeys(device for device in devices if device != "cpu"))
    if len(gpus) < processes:
        return None, (f"num_processes {processes} needs {processes} GPUs, one a process, but this server's workers have "
                      f"{len(gpus)} ({', '.join(gpus)}): set num_processes to {len(gpus)} or less, or give the server "
                      "more GPUs (LAYERSYNC_GPUS)")
    distinct = list(dict.fromkeys(slot for slot in free if slot != "cpu"))
    return (distinct[:processes] if len(distinct) >= processes else None), None


def launcher_command(command: list[str], processes: int) -> list[str]:
    """``command`` started under torchrun on this machine with ``processes`` ranks: ``python -m trainer`` becomes
    ``python -m torch.distributed.run --standalone --nproc_per_node N -m trainer`` (a wrapper such as ``nice``
    before the interpreter stays in front). The launcher waits for a cancelled run's checkpoint: the server's
    cancel grace decides when it is killed instead."""
    index = next((i for i, part in enumerate(command) if Path(part).name.startswith("python")), None)
    if index is None:
        raise OSError(f"worker_command {command} names no Python interpreter to start torchrun with: use one like "
                      "[\"python\", \"-m\", \"trainer\"] for runs of several processes")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "--shutdown_timeout", str(LAUNCHER_SHUTDOWN_SECONDS)]
    return [*command[: index + 1], *launcher, *command[index + 1:]]


class Worker(NamedTuple):
    pid: int
    started: int | None  # create time in ms since the epoch; None when it could not be read


def write_config(output_dir: str | Path, config: dict) -> Path:
    """Write ``output_dir/config.json`` (raises OSError when the folder cannot be written)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / CONFIG_FILE
    config_path.write_text(json.dumps(config, indent=2))
    return config_path


def start_time(pid: int) -> int | None:
    """The process's create time in ms since the epoch; None when there is no such process."""
    try:
        return round(psutil.Process(pid).create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_start(recorded: int | None, started: int) -> bool:
    if recorded is None or recorded < MIN_STARTED_MS:
        return True
    return abs(recorded - started) <= STARTED_TOLERANCE_MS


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` lives and is the one that started at ``started`` (a zombie is dead:
    it has exited and only waits for its parent to read its exit code)."""
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and same_start(started, round(process.create_time() * 1000))
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # alive, under another user
        return True


def stop_worker(pid: int, started: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Signal the worker's process group: SIGTERM makes it finish the step, checkpoint and end
    ``cancelled``; SIGKILL ends it at once. Nothing is sent once the pid is no longer the worker's."""
    if not pid_alive(pid, started):
        return
    # torchrun starts each rank in a session of its own: a SIGTERM reaches them through the launcher, which
    # forwards it and waits for their checkpoint; a SIGKILL would orphan them, so it goes to each of them too
    ranks = _descendant_groups(pid) if sig == signal.SIGKILL else []
    for group in [pid, *ranks]:
        try:
            os.killpg(group, sig)
        except (ProcessLookupError, PermissionError):
            pass  # already gone: the scheduler records how it ended


def _descendant_groups(pid: int) -> list[int]:
    """The process groups of a worker's descendants outside its own group (torchrun's ranks)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    groups = []
    for child in children:
        try:
            group = os.getpgid(child.pid)
        except (ProcessLookupError, PermissionError):
            continue
        if group != pid and group not in groups:
            groups.append(group)
    return groups


class Workers:
    """The workers this server started: it polls them, which reaps them (a zombie would look alive)
    and keeps how each ended until the scheduler asks. Workers adopted from an earlier server are
    looked up by pid and start time instead."""

    def __init__(self):
        self._children: dict[int, subprocess.Popen] = {}
        self._exit_codes: dict[int, int] = {}

    def launch(self, command: list[str], *, config_path: Path, device: str, processes: int = 1) -> Worker:
        """Start the worker on ``device`` (slots joined by commas) for the run whose config is ``config_path``;
        a run of several processes under torchrun, its ranks on loopback."""
        output_dir = config_path.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [TRAINER_ROOT, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"  # the log tail shows what the worker printed, as it printed it
        slots = split_slots(device)
        if slots and slots[0] != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(slots)
        if processes > 1:
            command = launcher_command(command, processes)
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # --standalone: every rank on this machine, over loopback
            if slots[0] == "cpu":  # ranks share the CPU: its threads, split between them
                env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
        argv = [*command, "--config", str(config_path), "--output-dir", str(output_dir), "--no-progress"]
        with open(output_dir / WORKER_LOG, "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._children[process.pid] = process
        self._exit_codes.pop(process.pid, None)  # an earlier worker's, whose pid this one was given
        return Worker(process.pid, start_time(process.pid))

    def reap(self) -> None:
        """Poll every worker this server started: the ended ones are reaped (no zombies pile up) and
        their exit codes kept until the scheduler asks; a worker whose run ended normally is never asked for."""
        for pid in list(self._children):
            self._poll(pid)

    def _poll(self, pid: int) -> bool:
        """Whether our child ``pid`` still runs; reaps it and keeps its exit code when it ended."""
        code = self._children[pid].poll()
        if code is None:
            return True
        self._exit_codes[pid] = code
        del self._children[pid]
        return False

    def alive(self, pid: int, started: int | None = None) -> bool:
        """Whether the worker lives: polled when this server started it, else looked up (pid_alive)."""
        if pid in self._children:
            return self._poll(pid)
        return pid_alive(pid, started)

    def exit_code(self, pid: int) -> int | None:
        """How a worker this server started ended (negative: the signal that killed it); None when unknown."""
        return self._exit_codes.pop(pid, None)
