"""Block-map probes: a short job that maps a config's model (``python -m trainer probe``) on a worker slot.

A probe is not a run: it trains nothing and keeps no metrics, so it has no row in the database. The
jobs live here, in memory, and each has a folder DATA_DIR/probes/<id>/ with its config, its worker's
output, and what the worker wrote at the end (trainer.cli's PROBE_RESULT, or PROBE_ERROR with the
reason), so that a finished probe's map outlives a restart of the server. The scheduler gives probes
free slots before queued runs (a probe takes seconds to minutes; a run hours) and counts the slots
they hold as busy.
"""

import json
import secrets
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.runs import log_tail
from app.workers import WORKER_LOG, Workers, pid_alive, write_config
from trainer.cli import PROBE_ERROR, PROBE_RESULT

JOB_FILE = "job.json"  # the worker's pid, its start time and its slot, so a restarted server knows it
REASON_LINES = 20
PROBES_KEPT = 100  # the newest finished probes' folders kept; older ones go as new probes come
ID_PATTERN = r"^[0-9a-f]{12}$"


class ProbeNotFound(LookupError):
    pass


@dataclass
class Probe:
    id: str
    folder: Path
    args: list[str] = field(default_factory=list)  # the probe's sizes, as `layersync probe` flags
    status: str = "queued"  # queued → running → done | failed
    slot: str | None = None
    pid: int | None = None
    started: int | None = None
    result: dict | None = None
    error: str | None = None

    def public(self) -> dict:
        return {"id": self.id, "status": self.status, "result": self.result, "error": self.error}


class Probes:
    """The probes of this server: queued in memory, their results on disk."""

    def __init__(self, folder: Path, command: list[str], workers: Workers, slots: int):
        self.folder = Path(folder)
        self.command = [*command, "probe"]
        self.workers = workers
        self.slots = slots  # 0: no worker may start here, so a probe would wait for ever
        self._jobs: dict[str, Probe] = {}
        self._lock = threading.Lock()  # the scheduler's tick and the routes use the jobs from their own threads
        for folder in sorted(p for p in self.folder.iterdir() if p.is_dir()) if self.folder.is_dir() else []:
            self._from_folder(folder.name, folder)  # a probe an earlier server left running holds its slot

    def submit(self, config: dict, args: list[str]) -> Probe:
        """Queue a probe of ``config`` (validated already); raises OSError when its folder cannot be written."""
        if self.slots == 0:
            raise NoSlots("this server has no worker slots (worker_slots is 0), so nothing can map the blocks here: "
                          "start the server with a worker slot, or run `layersync probe --config FILE` on a machine with torch")
        self._prune()
        probe = Probe(id=secrets.token_hex(6), folder=Path(), args=list(args))
        probe.folder = self.folder / probe.id
        write_config(probe.folder, dict(config, output_dir=str(probe.folder)))
        with self._lock:
            self._jobs[probe.id] = probe
        return probe

    def _prune(self) -> None:
        """Remove the folders of all but the newest PROBES_KEPT probes; a probe that waits or runs keeps its own."""
        if not self.folder.is_dir():
            return
        with self._lock:
            live = {probe_id for probe_id, probe in self._jobs.items() if probe.status in ("queued", "running")}
        folders = sorted((p for p in self.folder.iterdir() if p.is_dir() and p.name not in live),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        for folder in folders[PROBES_KEPT:]:
            shutil.rmtree(folder, ignore_errors=True)
            with self._lock:
                self._jobs.pop(folder.name, None)

    def get(self, probe_id: str) -> Probe:
        with self._lock:
            probe = self._jobs.get(probe_id)
        if probe is not None:
            return probe
        folder = self.folder / probe_id
        if not (folder / "config.json").is_file():
            raise ProbeNotFound(f"no probe {probe_id}: it was never started here, or its folder {folder} was removed; "
                                "map the blocks again")
        return self._from_folder(probe_id, folder)

    def _from_folder(self, probe_id: str, folder: Path) -> Probe:
        """A probe an earlier server started: what its folder says, or running while its worker lives."""
        probe = Probe(id=probe_id, folder=folder)
        if self._read_end(probe):
            return probe
        job = _read_json(folder / JOB_FILE) or {}
        if job.get("pid") and pid_alive(job["pid"], job.get("started")):
            probe.status, probe.pid, probe.started, probe.slot = "running", job["pid"], job.get("started"), job.get("slot")
            with self._lock:
                self._jobs[probe_id] = probe  # followed from now on: its slot is busy until it ends
            return probe
        probe.status = "failed"
        probe.error = "the server stopped before this probe finished, and its worker is gone: map the blocks again"
        return probe

    def busy_slots(self) -> list[str]:
        """The slots that running probes hold."""
        with self._lock:
            return [probe.slot for probe in self._jobs.values() if probe.status == "running" and probe.slot]

    def start(self, free: list[str]) -> None:
        """Start queued probes, oldest first, on ``free`` slots; the slots they take are removed from ``free``."""
        with self._lock:
            queued = [probe for probe in self._jobs.values() if probe.status == "queued"]
        for probe in queued:
            if not free:
                return
            slot = free.pop(0)
            try:
                pid, started = self.workers.launch([*self.command, *probe.args], config_path=probe.folder / "config.json",
                                                   device=slot)
                (probe.folder / JOB_FILE).write_text(json.dumps({"pid": pid, "started": started, "slot": slot}))
            except OSError as exc:
                probe.status, probe.error = "failed", f"the probe's worker could not be started ({exc}): check the worker_command setting"
                free.insert(0, slot)
                continue
            probe.status, probe.slot, probe.pid, probe.started = "running", slot, pid, started

    def settle(self) -> None:
        """Mark the probes whose worker has exited done or failed, by what they wrote."""
        with self._lock:
            running = [probe for probe in self._jobs.values() if probe.status == "running"]
        for probe in running:
            if self.workers.alive(probe.pid, probe.started):
                continue
            code = self.workers.exit_code(probe.pid)
            if not self._read_end(probe):
                how = "exited" if code is None else f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                lines = log_tail(probe.folder, REASON_LINES)
                probe.status = "failed"
                probe.error = f"the probe's worker {how} without a result" + (
                    "; its last output:\n" + "\n".join(lines) if lines else f" and printed nothing (see {WORKER_LOG})")

    @staticmethod
    def _read_end(probe: Probe) -> bool:
        result, error = _read_json(probe.folder / PROBE_RESULT), _read_json(probe.folder / PROBE_ERROR)
        if result is not None:
            probe.status, probe.result = "done", result
        elif error is not None:
            probe.status, probe.error = "failed", error.get("error") or "the probe failed without saying why"
        return result is not None or error is not None


class NoSlots(RuntimeError):
    pass


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


HEATMAP_PX = 360  # the heatmap's side, whatever the depth (cells of 6 to 24 px)


def _fill(cosine: float | None) -> str:
    """A cell's colour: white at cosine 0 (or below) to deep blue at 1; grey where the blocks cannot be compared."""
    if cosine is None:
        return "#d9d9d9"
    return f"hsl(215, 65%, {97 - 60 * max(0.0, min(1.0, cosine)):.0f}%)"


def heatmap(result: dict) -> dict:
    """What the block map's partial draws: the cells (1-based blocks), the updates and the suggested pair."""
    depth, cosine, update = result["depth"], result["cosine"], result["update"]
    cell = max(6, min(24, HEATMAP_PX // max(depth, 1)))
    cells = [{"x": j * cell, "y": i * cell, "fill": _fill(value), "student": i + 1, "teacher": j + 1,
              "title": f"block {i + 1} · block {j + 1}: " + ("not comparable (different shapes)" if value is None else f"{value:.3f}")}
             for i, row in enumerate(cosine) for j, value in enumerate(row)]
    known = [value for value in update if value is not None]
    top = max(known, default=0.0) or 1.0
    updates = [{"block": i + 1, "value": value, "width": 0 if value is None else round(100 * value / top)}
                for i, value in enumerate(update)]
    pair = result.get("suggested")
    return {"depth": depth, "cell": cell, "side": cell * depth, "cells": cells, "updates": updates, "suggested": pair,
            "pair_cosine": cosine[pair["student"] - 1][pair["teacher"] - 1] if pair else None,
            # every block leaves the stream as it is: an untrained model (the demo's blocks start as the identity)
            "identity": bool(known) and max(known) < 1e-6}
