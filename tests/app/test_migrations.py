"""The schema's migrations: a new database, one made before migrations existed, and one already current."""

import io
import sqlite3

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlmodel import Session, SQLModel, select

from app.db import create_schema, make_engine
from app.migrations import FIRST_REVISION, alembic_config
from app.models import Run

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
PREVIOUS = ScriptDirectory.from_config(alembic_config()).get_revision(HEAD).down_revision

# The schema as the server of commit 8693924 (the last before migrations) created it, copied from its
# database's sqlite_master: a frozen copy, so a later change of app/models.py cannot change this test's input.
BEFORE_MIGRATIONS = """
CREATE TABLE run (
    name VARCHAR(200) NOT NULL, id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, config JSON NOT NULL,
    status VARCHAR NOT NULL, created_at DATETIME NOT NULL, started_at DATETIME, finished_at DATETIME,
    output_dir VARCHAR NOT NULL, pid INTEGER, pid_started INTEGER, queued_at DATETIME, slot VARCHAR, error VARCHAR,
    step INTEGER NOT NULL, last_metrics JSON NOT NULL, last_checkpoint VARCHAR, cancel_requested BOOLEAN NOT NULL,
    events_offset INTEGER NOT NULL
);
CREATE INDEX ix_run_status ON run (status);
CREATE TABLE metric (
    run_id INTEGER NOT NULL, name VARCHAR NOT NULL, step INTEGER NOT NULL, value FLOAT NOT NULL,
    PRIMARY KEY (run_id, name, step), FOREIGN KEY(run_id) REFERENCES run (id)
) WITHOUT ROWID;
CREATE TABLE metricblock (
    run_id INTEGER NOT NULL, name VARCHAR NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    min_step INTEGER NOT NULL, min_value FLOAT NOT NULL, max_step INTEGER NOT NULL, max_value FLOAT NOT NULL,
    PRIMARY KEY (run_id, name, block), FOREIGN KEY(run_id) REFERENCES run (id)
) WITHOUT ROWID;
CREATE TABLE runevent (
    seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL, kind VARCHAR NOT NULL,
    data VARCHAR NOT NULL, FOREIGN KEY(run_id) REFERENCES run (id)
);
CREATE INDEX ix_runevent_run_seq ON runevent (run_id, seq);
"""
LATE_COLUMNS = ("pid_started INTEGER, ", "queued_at DATETIME, ")  # added by a server's start before migrations

ROWS = """
INSERT INTO run VALUES ('first', 1, '{"max_train_steps": 30}', 'completed', '2026-11-30 10:00:00', '2026-11-30 10:00:01',
    '2026-11-30 10:01:00', '/data/runs/1', NULL, NULL, '2026-11-30 10:00:00', 'cpu', NULL, 30, '{"loss": 0.5}',
    '/data/runs/1/checkpoints/step_30', 0, 4096);
INSERT INTO run VALUES ('second', 3, '{}', 'queued', '2026-11-30 11:00:00', NULL, NULL, '', NULL, NULL,
    '2026-11-30 11:00:00', NULL, NULL, 0, '{}', NULL, 0, 0);
INSERT INTO metric VALUES (1, 'loss', 10, 0.9), (1, 'loss', 20, 0.7), (1, 'loss', 30, 0.5), (1, 'lr', 30, 0.0001);
INSERT INTO metricblock VALUES (1, 'loss', 0, 3, 30, 0.5, 10, 0.9), (1, 'lr', 0, 1, 30, 0.0001, 30, 0.0001);
INSERT INTO runevent VALUES (1, 1, 'status', '{"status": "running"}'), (2, 1, 'metric', '{"step": 10}'),
    (5, 1, 'end', '{"status": "completed"}');
UPDATE sqlite_sequence SET seq = 4 WHERE name = 'run';  -- run 2 and 4 were deleted: their ids stay used
UPDATE sqlite_sequence SET seq = 7 WHERE name = 'runevent';
"""
TABLES = ("run", "metric", "metricblock", "runevent", "sqlite_sequence")


def old_database(path, schema: str = BEFORE_MIGRATIONS, rows: str = ROWS) -> dict[str, list]:
    """Write a database as a server before migrations left it; returns every row of every table."""
    with sqlite3.connect(path) as connection:
        connection.executescript(schema + rows)
    return dump(path)


def dump(path) -> dict[str, list]:
    with sqlite3.connect(path) as connection:
        return {table: connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall() for table in TABLES}


def schema_sql(path) -> list[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT sql FROM sqlite_master WHERE name != 'alembic_version' AND sql IS NOT NULL")
        return sorted(" ".join(sql.split()) for (sql,) in rows)


def revision(engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def test_a_new_database_is_at_the_newest_revision_and_has_exactly_the_models_schema(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'layersync.db'}")
    create_schema(engine)
    assert revision(engine) == HEAD
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
    engine.dispose()
    # what compare_metadata does not see on SQLite: AUTOINCREMENT, WITHOUT ROWID, the exact types
    reference = create_engine(f"sqlite:///{tmp_path / 'create_all.db'}")
    SQLModel.metadata.create_all(reference)
    reference.dispose()
    assert schema_sql(tmp_path / "layersync.db") == schema_sql(tmp_path / "create_all.db")


def test_a_database_made_before_migrations_is_stamped_upgraded_and_keeps_every_row(tmp_path):
    path = tmp_path / "layersync.db"
    before = old_database(path)
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    assert revision(engine) == HEAD
    assert dump(path) == before
    with Session(engine) as session:  # the models read it, and a new run takes an id never given out
        assert [(run.id, run.name, run.step) for run in session.exec(select(Run).order_by(Run.id))] == [
            (1, "first", 30), (3, "second", 0)]
        session.add(Run(name="third", config={}))
        session.commit()
        assert session.exec(select(Run.id).where(Run.name == "third")).one() == 5
    engine.dispose()


def test_a_database_older_still_gets_the_columns_added_since_and_keeps_its_runs(tmp_path):
    path = tmp_path / "layersync.db"
    schema = BEFORE_MIGRATIONS
    for column in LATE_COLUMNS:
        schema = schema.replace(column, "")
    runs, rest = ROWS.split("INSERT INTO metric ", 1)
    rows = runs.replace("NULL, NULL, '2026-11-30 10:00:00', 'cpu'", "NULL, 'cpu'").replace(
        "NULL, NULL,\n    '2026-11-30 11:00:00', NULL", "NULL, NULL") + "INSERT INTO metric " + rest
    before = old_database(path, schema, rows)
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    with Session(engine) as session:
        runs = session.exec(select(Run).order_by(Run.id)).all()
        assert [(run.name, run.step, run.pid_started, run.queued_at) for run in runs] == [
            ("first", 30, None, None), ("second", 0, None, None)]
    engine.dispose()
    assert {table: rows for table, rows in dump(path).items() if table != "run"} == {
        table: rows for table, rows in before.items() if table != "run"}


def test_upgrading_a_current_database_again_changes_nothing(tmp_path):
    path = tmp_path / "layersync.db"
    old_database(path)
    engine = make_engine(f"sqlite:///{path}")
    create_schema(engine)
    schema, rows = schema_sql(path), dump(path)
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    create_schema(engine)
    engine.dispose()
    assert not [sql for sql in statements if not sql.lstrip().upper().startswith(("SELECT", "PRAGMA"))]
    assert schema_sql(path) == schema and dump(path) == rows and revision(make_engine(f"sqlite:///{path}")) == HEAD


def test_a_database_with_only_some_of_the_tables_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "layersync.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, name VARCHAR)")
    engine = make_engine(f"sqlite:///{path}")
    with pytest.raises(RuntimeError, match="has some of LayerSync's tables but not metric, metricblock, runevent.*"
                                           "point LAYERSYNC_DATABASE_URL at another database"):
        create_schema(engine)
    engine.dispose()


def test_the_first_revision_is_where_a_database_before_migrations_is_stamped():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_revision(FIRST_REVISION).down_revision is None


def test_the_migrations_render_for_postgresql_without_a_server():
    config = alembic_config()
    config.output_buffer = io.StringIO()
    config.set_main_option("sqlalchemy.url", "postgresql://layersync@db/layersync")
    command.upgrade(config, "head", sql=True)
    sql = " ".join(config.output_buffer.getvalue().split())
    assert "CREATE TABLE run (" in sql and "id SERIAL NOT NULL" in sql and "config JSON NOT NULL" in sql
    assert "CREATE TABLE metric (" in sql and "FOREIGN KEY(run_id) REFERENCES run (id)" in sql
    assert "AUTOINCREMENT" not in sql and "WITHOUT ROWID" not in sql  # SQLite's options stay SQLite's
    # the newest revision is recorded last: inserted by the first revision when it is the only one, else updated to
    assert sql.endswith(f"VALUES ('{HEAD}'); COMMIT;") or sql.endswith(f"SET version_num='{HEAD}' WHERE "
                                                                         f"alembic_version.version_num = '{PREVIOUS}'; COMMIT;")
