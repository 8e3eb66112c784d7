"""The database engine (SQLite in WAL mode by default, or PostgreSQL through psycopg 3), its schema
(app.migrations) and the request-scoped session."""

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import event, make_url
from sqlalchemy.engine import URL, Engine
from sqlmodel import Session, create_engine

from app import migrations


def make_engine(url: str) -> Engine:
    """An engine whose SQLite connections wait for each other instead of failing with 'locked', or a
    PostgreSQL one (``postgresql://`` means psycopg 3). Raises ValueError for an in-memory SQLite database
    and for a PostgreSQL URL without its driver installed."""
    if not url.startswith("sqlite"):
        return _server_engine(url)
    if _in_memory(url):
        # each pooled connection would get a database of its own, and every run would be gone at exit
        raise ValueError(f"the database URL {url} is an in-memory SQLite database, which does not outlive the "
                         "server: set LAYERSYNC_DATABASE_URL to a file, e.g. sqlite:////data/layersync.db, or leave it "
                         "empty for DATA_DIR/layersync.db")
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # routes run in a thread pool and every SSE replay takes a connection: a pool of 5 is too few
    engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=20, max_overflow=40)

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record):
        cursor = connection.cursor()
        # WAL: readers (SSE replays, pages) never block the follower's writes, nor it them
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


POSTGRES_SCHEMES = ("postgresql", "postgres")  # postgres://: the form Heroku and others hand out


def postgres_url(url: str) -> URL | None:
    """The URL with psycopg 3 as its driver when it names a PostgreSQL database; None otherwise."""
    parsed = make_url(url)
    scheme, _, driver = parsed.drivername.partition("+")
    if scheme not in POSTGRES_SCHEMES:
        return None
    return parsed.set(drivername=f"postgresql+{driver or 'psycopg'}")


def _server_engine(url: str) -> Engine:
    postgres = postgres_url(url)
    if postgres is None:  # another server database SQLAlchemy knows: as it comes, untested here
        return create_engine(url, pool_pre_ping=True)
    if postgres.drivername == "postgresql+psycopg" and importlib.util.find_spec("psycopg") is None:
        raise ValueError(f"the database URL {postgres.render_as_string(hide_password=True)} is a PostgreSQL one, and its "
                         "driver psycopg 3 is not installed: pip install 'layersync-studio[postgres]' (or psycopg[binary])")
    # timezone UTC: times come back in UTC, as written; and before revision 0003 the columns were timestamps
    # without a zone, into which a session in another zone would convert the aware datetimes we write
    return create_engine(postgres, pool_pre_ping=True, pool_size=20, max_overflow=40,
                         connect_args={"options": "-c timezone=UTC"})


def _in_memory(url: str) -> bool:
    """sqlite://, sqlite:///:memory: and SQLite URI file names with mode=memory (file::memory:, …)."""
    parsed = make_url(url)
    database = parsed.database or ""
    memory_uri = database.startswith("file::memory:") or "mode=memory" in database or parsed.query.get("mode") == "memory"
    return database in ("", ":memory:") or memory_uri


def create_schema(engine: Engine) -> None:
    """Bring the database to the newest schema (Alembic): every table for an empty one, the missing
    revisions for an older one."""
    migrations.upgrade(engine)


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
