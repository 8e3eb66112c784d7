"""The database as a setting: PostgreSQL beside SQLite. Each test runs on the suite's database (SQLite, or
PostgreSQL when LAYERSYNC_TEST_DATABASE_URL is set: see tests/utils/databases.py); the ones that need a
PostgreSQL server say so and are skipped without one."""

import importlib.util
import json
import sys
import threading
from datetime import datetime, timezone

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from app import scheduler
from app.db import create_schema, make_engine, postgres_url
from app.eventlog import append_event, new_events, server_event
from app.lifecycle import RunChanged, RunStatus, transition
from app.models import Run, RunEvent
from tests.utils.databases import on_postgres
from tests.utils.factories import SEED_SNIPPET
from tests.utils.server import FAKE_WORKER
from tests.utils.server_process import ServerProcess
from tests.utils.waiting import wait_until

needs_postgres = pytest.mark.skipif(not on_postgres(), reason="needs a PostgreSQL server: set LAYERSYNC_TEST_DATABASE_URL "
                                    "(.ci/postgres starts one and prints its URL)")


def test_postgresql_urls_use_psycopg_3():
    assert postgres_url("postgresql://u:p@db:5433/layersync").drivername == "postgresql+psycopg"
    assert postgres_url("postgres://u@db/layersync").drivername == "postgresql+psycopg"  # the form some hosts hand out
    assert postgres_url("postgresql+psycopg2://u@db/x").drivername == "postgresql+psycopg2"  # a driver named stays
    assert postgres_url("sqlite:////data/layersync.db") is None


def test_a_postgresql_url_without_its_driver_says_which_extra_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a))
    with pytest.raises(ValueError, match=r"driver psycopg 3 is not installed: pip install 'layersync-studio\[postgres\]'"):
        make_engine("postgresql://layersync:secret@db/layersync")


def _add_run(session: Session, name: str = "r", **values) -> Run:
    run = Run(name=name, config={"max_train_steps": 10}, **values)
    session.add(run)
    session.commit()
    session.refresh(run)
    return run


def test_steps_offsets_seeds_and_start_times_beyond_32_bits_are_stored(engine):
    big = 2**40 + 7
    with Session(engine) as session:
        run = _add_run(session, step=big, events_offset=big, pid_started=1_764_000_000_123)
        session.exec(text("INSERT INTO metric (run_id, name, step, value) VALUES (:r, 'loss', :s, 0.5)"),
                     params={"r": run.id, "s": big})
        session.commit()
        session.refresh(run)
        assert (run.step, run.events_offset, run.pid_started) == (big, big, 1_764_000_000_123)
        assert session.exec(text("SELECT step FROM metric WHERE run_id = :r"), params={"r": run.id}).one()[0] == big


@needs_postgres
def test_postgresql_ids_and_event_seqs_go_past_32_bits(engine):
    with Session(engine) as session:
        for sequence in ("run_id_seq", "runevent_seq_seq", "study_id_seq"):
            session.exec(text(f"SELECT setval('{sequence}', {2**33})"))
        session.commit()
        run = _add_run(session)
        append_event(session, run_id=run.id, event=server_event("log", level="info", message="hello"))
        session.commit()
        assert run.id == 2**33 + 1 and session.exec(select(RunEvent.seq)).one() == 2**33 + 1
        kinds = dict(session.exec(text("SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                                       "WHERE table_schema = 'public' AND table_name <> 'alembic_version'")).all())
    assert kinds["run.id"] == kinds["runevent.seq"] == kinds["metric.step"] == kinds["studyrun.seed"] == "bigint"
    assert kinds["run.pid"] == "integer"  # a pid stays a pid


@needs_postgres
def test_the_migrations_go_down_and_up_again_on_postgresql(engine):
    from alembic import command

    from app.migrations import alembic_config

    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0002")
        assert connection.exec_driver_sql("SELECT data_type FROM information_schema.columns WHERE table_name = 'run' "
                                          "AND column_name = 'step'").scalar() == "integer"
    create_schema(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT data_type FROM information_schema.columns WHERE table_name = 'run' "
                                          "AND column_name = 'step'").scalar() == "bigint"


@needs_postgres
def test_times_are_stored_as_utc_whatever_the_database_time_zone(engine):
    database = engine.url.database
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(f"ALTER DATABASE \"{database}\" SET timezone TO 'America/New_York'")
    other = make_engine(engine.url.render_as_string(hide_password=False))
    when = datetime(2026, 12, 2, 3, 4, 5, 600_000, tzinfo=timezone.utc)
    with Session(other) as session:
        run_id = _add_run(session, created_at=when).id
    with Session(other) as session:
        stored = session.get(Run, run_id).created_at
    other.dispose()
    assert stored.replace(tzinfo=timezone.utc) == when


def test_an_event_that_commits_late_is_not_skipped_by_a_reader_that_read_a_later_one(engine):
    """Writer A takes its event's seq first and commits last; writer B comes in between. A reader that
    keeps one cursor (seq > the last it saw), as the SSE feed does, must still get both, in commit order."""
    with Session(engine) as session:
        run_id = _add_run(session).id
    seen, cursor = [], 0

    def read() -> None:
        nonlocal cursor
        with Session(engine) as reader:
            for row in new_events(reader, after=cursor):
                seen.append(json.loads(row.data)["message"])
                cursor = row.seq

    writer_a = Session(engine)
    append_event(writer_a, run_id=run_id, event=server_event("log", message="A"))
    writer_a.flush()  # A's row (and its seq) exists, uncommitted
    b_started, b_done = threading.Event(), threading.Event()

    def write_b() -> None:
        b_started.set()
        with Session(engine) as writer_b:
            append_event(writer_b, run_id=run_id, event=server_event("log", message="B"))
            writer_b.commit()
        b_done.set()

    thread = threading.Thread(target=write_b)
    thread.start()
    # the moment a naive design skips A: B committed (or waits to, behind A) while A is still open
    wait_until(lambda: b_done.is_set() or (b_started.is_set() and _waiting_on_a_lock(engine, on_postgres())),
               what="writer B to commit or to wait for writer A")
    read()
    writer_a.commit()
    writer_a.close()
    thread.join()
    read()
    assert seen == ["A", "B"]


def _waiting_on_a_lock(engine, postgres: bool) -> bool:
    """Whether another session waits for a lock (PostgreSQL); on SQLite B's insert waits for A's write
    lock inside the driver (busy_timeout), which nothing shows: B cannot commit before A there."""
    if not postgres:
        return True
    with engine.connect() as connection:
        return bool(connection.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted AND database = "
                                               "(SELECT oid FROM pg_database WHERE datname = current_database())").scalar())


def test_two_schedulers_claiming_at_once_take_different_runs(engine, tmp_path):
    with Session(engine) as session:
        first, second = _add_run(session, "first").id, _add_run(session, "second").id
    with Session(engine) as one, Session(engine) as two:
        claimed_one = scheduler._next_queued(one)
        if on_postgres():  # the first claim's row is locked until it commits: the second passes over it
            assert (claimed_one.id, scheduler._next_queued(two).id) == (first, second)
        else:  # SQLite: both see the oldest; the claim that comes second finds it no longer queued
            assert scheduler._next_queued(two).id == first
        transition(one, run_id=first, to=RunStatus.RUNNING, expected=RunStatus.QUEUED)
        one.commit()
        if not on_postgres():
            with pytest.raises(RunChanged):
                transition(two, run_id=first, to=RunStatus.RUNNING, expected=RunStatus.QUEUED)


@pytest.fixture
def shared_database(tmp_path, monkeypatch, database_url):
    """Two servers' environment: the fake worker, and one database they share (on SQLite, its file
    outside both data dirs, which each server locks for itself)."""
    monkeypatch.setenv("LAYERSYNC_WORKER_COMMAND", json.dumps([sys.executable, str(FAKE_WORKER)]))
    if not on_postgres():
        monkeypatch.setenv("LAYERSYNC_DATABASE_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    return database_url


def test_two_servers_on_one_database_launch_each_queued_run_once(tmp_path, shared_database):
    servers = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        servers.append(ServerProcess(tmp_path / name / "data", model_roots=[], worker_slots=2))
    try:
        for server in servers:
            server.start()
        runs = [servers[index % 2].http.post("/api/runs", json=dict(SEED_SNIPPET, max_train_steps=3)).json()
                for index in range(12)]
        ended = [servers[0].wait_ended(run["id"]) for run in runs]
        with Session(servers[0].engine) as session:
            messages = [(row.run_id, json.loads(row.data).get("message", "")) for row in session.exec(select(RunEvent))]
    finally:
        for server in servers:
            server.close()
    assert [(run["status"], run["error"]) for run in ended] == [("completed", None)] * len(runs)
    for run in runs:
        claims = [m for run_id, m in messages if run_id == run["id"] and m.startswith("starting a worker on")]
        launches = [m for run_id, m in messages if run_id == run["id"] and m.startswith("worker started")]
        assert len(claims) == len(launches) == 1, f"run {run['id']} was claimed {len(claims)}×, launched {len(launches)}×"


def test_servers_on_a_postgresql_database_may_share_a_data_dir_and_on_sqlite_may_not(tmp_path):
    from app.datadir import DataDirInUse, hold_data_dir
    from app.settings import Settings

    postgres = Settings(data_dir=tmp_path / "data", database_url="postgresql://layersync@db/layersync")
    with hold_data_dir(postgres), hold_data_dir(postgres):
        assert not (tmp_path / "data" / "server.lock").exists()
    sqlite = Settings(data_dir=tmp_path / "data", database_url=None)
    with hold_data_dir(sqlite), pytest.raises(DataDirInUse):
        with hold_data_dir(sqlite):
            pass


@needs_postgres
def test_the_migrated_postgresql_schema_is_the_models_schema(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []
