"""The run's events file: one JSON object per line, flushed, appended. It is the contract between
the training program and whoever follows the run (the web server, a script, ``tail -f``).

Event types: status, metric, log, sample, checkpoint, error, end. Every event has ``event`` and
``time`` (Unix seconds); non-finite numbers are written as null so every line stays valid JSON.
One writer at a time: the worker holds the run folder's lock (trainer.runlock) while it writes.
"""

import json
import math
import time
from pathlib import Path

EVENT_TYPES = ("status", "metric", "log", "sample", "checkpoint", "error", "end")
EVENTS_FILE = "events.jsonl"


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventWriter:
    def __init__(self, output_dir: str | Path, echo=None):
        self.path = Path(output_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._echo = echo  # called with (event, fields) for log/error lines, e.g. to print them
        if _ends_mid_line(self.path):
            # an earlier writer was killed mid-line: end that half line, or our first event would be
            # glued to it and lost with it (a follower skips the half line)
            self._file.write("\n")
            self._file.flush()

    def emit(self, event: str, **fields) -> None:
        assert event in EVENT_TYPES, event
        record = {"event": event, "time": round(time.time(), 3)}
        record.update({key: _finite(value) for key, value in fields.items()})
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._echo is not None and event in ("log", "error"):
            self._echo(event, record)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def close(self) -> None:
        self._file.close()


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        return size > 0 and (file.seek(size - 1), file.read(1))[1] != b"\n"


def read_events(output_dir: str | Path) -> list[dict]:
    """Every complete event of a run (a line still being written, and the half line a killed worker
    left, are left out)."""
    path = Path(output_dir) / EVENTS_FILE
    events = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.endswith("\n"):
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return events
