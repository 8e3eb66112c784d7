"""The database a test runs on: SQLite in its temp dir (the default), or, when LAYERSYNC_TEST_DATABASE_URL
names a PostgreSQL server (``postgresql://postgres@127.0.0.1:54329/postgres``, see .ci/postgres), a
database of its own on that server, made for the test and dropped after it.

Each test's database is a copy (CREATE DATABASE … TEMPLATE) of one made once per session and
brought to the newest revision, so a test starts from an empty schema in a few milliseconds rather
than running the migrations again. The URL is handed to the app the way a user would hand it:
LAYERSYNC_DATABASE_URL, so Settings, the servers a test starts and their workers all see it.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import make_url

TEST_DATABASE_ENV = "LAYERSYNC_TEST_DATABASE_URL"
APP_DATABASE_ENV = "LAYERSYNC_DATABASE_URL"


def server_url() -> str | None:
    """The PostgreSQL server the tests run on, or None for SQLite."""
    return os.environ.get(TEST_DATABASE_ENV) or None


def on_postgres() -> bool:
    return server_url() is not None


def database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return make_url(server_url()).set(database=name).render_as_string(hide_password=False)


def _admin():
    import psycopg

    url = make_url(server_url()).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


def create_database(template: str | None = None) -> str:
    """A new empty database (a copy of ``template`` when given); returns its name."""
    name = f"layersync_test_{uuid.uuid4().hex[:16]}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return name


def drop_database(name: str) -> None:
    """Drop it, ending the connections a test left open (a killed server's, a leaked pool's)."""
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def template_database() -> Iterator[str]:
    """A database at the newest revision that each test's database copies; dropped at the end."""
    from app.db import create_schema, make_engine

    name = create_database()
    try:
        engine = make_engine(database_url(name))
        create_schema(engine)
        engine.dispose()  # a template must have no connections while it is copied
        yield name
    finally:
        drop_database(name)


@contextmanager
def fresh_database(template: str) -> Iterator[str]:
    """A fresh copy of the template for one test; yields its URL."""
    name = create_database(template)
    try:
        yield database_url(name)
    finally:
        drop_database(name)
