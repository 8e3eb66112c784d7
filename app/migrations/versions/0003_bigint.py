"""PostgreSQL: 64-bit ids, steps, byte offsets, worker start times (ms) and seeds; times with their zone.

PostgreSQL's INTEGER is 32 bits, and these pass 2**31: a worker's start time in ms since the epoch
today, a seed up to 2**32 - 1, a byte offset past 2 GiB, a long run's steps, ids and event seqs. The
API admits values up to 2**63 - 1 (app.bounds). SQLite's INTEGER holds 64 bits already, and rebuilding
its tables would forget the ids given out to deleted rows (AUTOINCREMENT): nothing changes there.

The models' datetimes are aware (UTC): on PostgreSQL they become TIMESTAMP WITH TIME ZONE, the values
stored so far read as the UTC they were written in, so no session's time zone can shift them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = {
    "run": ("id", "pid_started", "step", "events_offset"),
    "metric": ("run_id", "step"),
    "metricblock": ("run_id", "block", "count", "min_step", "max_step"),
    "runevent": ("seq", "run_id"),
    "study": ("id",),
    "studyrun": ("run_id", "study_id", "seed"),
}
# the sequences that SERIAL made for the 32-bit ids stop at 2**31 - 1 by themselves
SEQUENCES = ("run_id_seq", "runevent_seq_seq", "study_id_seq")
TIMES = {"run": ("created_at", "started_at", "finished_at", "queued_at"), "study": ("created_at",)}


def _postgres() -> bool:
    return op.get_context().dialect.name == "postgresql"  # also in offline mode (alembic upgrade --sql)


def upgrade() -> None:
    if not _postgres():
        return
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS bigint MAXVALUE 9223372036854775807")
    _times(sa.DateTime(timezone=True), sa.DateTime())


def downgrade() -> None:
    if not _postgres():
        return
    _times(sa.DateTime(), sa.DateTime(timezone=True))
    for sequence in SEQUENCES:
        op.execute(f"ALTER SEQUENCE {sequence} AS integer MAXVALUE 2147483647")
    for table, columns in COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())


def _times(to: sa.DateTime, existing: sa.DateTime) -> None:
    for table, columns in TIMES.items():
        for column in columns:  # either way the wall-clock time of UTC: AT TIME ZONE adds or drops the zone
            op.alter_column(table, column, type_=to, existing_type=existing, postgresql_using=f"{column} AT TIME ZONE 'UTC'")
