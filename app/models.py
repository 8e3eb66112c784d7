"""Tables: runs, their metric points (and per-block summaries of them), their event log, and studies."""

from copy import copy
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import create_model, field_validator
from sqlalchemy import JSON, BigInteger, Column, Index, Integer
from sqlmodel import Field, SQLModel

SQL_INT_MAX = 2**63 - 1  # the largest integer a column holds: ids and steps beyond it are refused before a query

# ids, steps, offsets and times in ms may pass 2**31: 64 bits on PostgreSQL (revision 0003). SQLite's
# INTEGER is 64 bits already, and only "INTEGER PRIMARY KEY" is its rowid (AUTOINCREMENT), so it keeps that
BigInt = BigInteger().with_variant(Integer(), "sqlite")

# metric points are summarised per block of this many steps, so a long series is downsampled
# from ~1/64 of its rows (see app.metrics)
BLOCK_STEPS = 64


class RunStatus(str, Enum):
    """A run's status, stored and answered as its value; app.lifecycle says which moves are allowed."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # in messages and templates the word, not "RunStatus.QUEUED"
        return self.value

    __format__ = str.__format__


RUN_STATUSES = tuple(status.value for status in RunStatus)  # the words, for a Literal parameter


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RunBase(SQLModel):
    # no RunCreate: a run is created from the flat config JSON itself (with the name beside it),
    # so a file that works with the CLI posts as it is
    name: str = Field(max_length=200)


class Run(RunBase, table=True):
    # ids are never reused after a delete: a run's URL, folder and event ids stay its own
    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default=RunStatus.QUEUED, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_dir: str = ""
    pid: int | None = None
    # the worker's start time: a pid the system gave to another process is not the worker
    pid_started: int | None = Field(default=None, sa_type=BigInt)
    queued_at: datetime | None = Field(default_factory=utcnow)  # the queue's order; a resume queues again
    slot: str | None = None  # the GPU id the worker was given, or "cpu"
    error: str | None = None  # why it failed, in words
    step: int = Field(default=0, sa_type=BigInt)  # the last step the worker reported
    last_metrics: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    last_checkpoint: str | None = None
    cancel_requested: bool = False
    events_offset: int = Field(default=0, sa_type=BigInt)  # bytes of events.jsonl already stored: a restarted server resumes here


# the server's own columns, which the API does not answer: where the run's folder is on the server's
# disk, its worker process, and how far its events file is stored
SERVER_ONLY = ("output_dir", "pid", "pid_started", "slot", "events_offset")

# the run's other columns as they are declared on Run (their types, defaults and limits), not typed again
_RunColumns = create_model(
    "RunColumns", __base__=SQLModel,
    **{name: (field.annotation, copy(field)) for name, field in Run.model_fields.items() if name not in SERVER_ONLY},
)


class RunPublic(_RunColumns):
    """A run as the API answers: its columns but the server's own, and what is computed from them."""

    id: int  # always set once stored
    url: str
    max_train_steps: int
    sample_url: str | None  # the newest sample grid
    queue_position: int | None = None  # 1 for the run that starts next; None when not queued

    @field_validator("created_at", "started_at", "finished_at", "queued_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # SQLite hands datetimes back without their zone; they were stored as UTC
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


class RunsPage(SQLModel):
    runs: list[RunPublic]
    total: int
    limit: int
    offset: int


class Metric(SQLModel, table=True):
    """One point of one series; a resumed run that repeats a step overwrites it."""

    # (run_id, name, step) in that order: one series is one range of the primary key
    __table_args__ = {"sqlite_with_rowid": False}
    run_id: int = Field(primary_key=True, foreign_key="run.id", sa_type=BigInt)
    name: str = Field(primary_key=True)
    step: int = Field(primary_key=True, sa_type=BigInt)
    value: float


class MetricBlock(SQLModel, table=True):
    """The smallest and largest point of a series within steps [block*BLOCK_STEPS, (block+1)*BLOCK_STEPS)."""

    __table_args__ = {"sqlite_with_rowid": False}
    run_id: int = Field(primary_key=True, foreign_key="run.id", sa_type=BigInt)
    name: str = Field(primary_key=True)
    block: int = Field(primary_key=True, sa_type=BigInt)
    count: int = Field(sa_type=BigInt)
    min_step: int = Field(sa_type=BigInt)
    min_value: float
    max_step: int = Field(sa_type=BigInt)
    max_value: float


class RunEvent(SQLModel, table=True):
    """Every event of a run, in order; ``seq`` is the SSE ``id:`` and ``data`` the JSON sent as is."""

    # AUTOINCREMENT: a deleted run's last seq is never given out again, or a live stream (which sends
    # seq > the last it sent) would skip the next events
    __table_args__ = (Index("ix_runevent_run_seq", "run_id", "seq"), {"sqlite_autoincrement": True})
    seq: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    run_id: int = Field(foreign_key="run.id", sa_type=BigInt)
    kind: str
    data: str


class Study(SQLModel, table=True):
    """Paired runs: one per (arm, seed), each arm the base config with its overrides (app.studies)."""

    __table_args__ = {"sqlite_autoincrement": True}
    id: int | None = Field(default=None, primary_key=True, sa_type=BigInt)
    name: str = Field(max_length=200)
    config: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))  # the base config, as posted
    seeds: list[int] = Field(sa_column=Column(JSON, nullable=False))
    arms: dict[str, dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))  # name → overrides, in order
    created_at: datetime = Field(default_factory=utcnow)


class StudyRun(SQLModel, table=True):
    """A run's place in a study: its arm and seed. A table of its own rather than columns on ``run``: a
    foreign key added to ``run`` makes SQLite rebuild that table, and the rebuilt table forgets the ids
    given out to deleted runs (AUTOINCREMENT), which would then be given out again."""

    run_id: int = Field(primary_key=True, foreign_key="run.id", sa_type=BigInt)  # a run belongs to one study at most
    study_id: int = Field(foreign_key="study.id", index=True, sa_type=BigInt)
    arm: str
    seed: int = Field(sa_type=BigInt)
