"""Alembic's environment: migrations run on the connection ``app.migrations.upgrade`` passes, or, from
the alembic command line, on the database the server's settings name."""

from logging.config import fileConfig

from alembic import context
from sqlmodel import SQLModel

from app import models  # noqa: F401 - registers the tables on SQLModel.metadata

if context.config.config_file_name is not None:  # the command line's alembic.ini says how to log
    fileConfig(context.config.config_file_name)


def run_on(connection) -> None:
    # batch mode: SQLite alters a table by copying it, and autogenerate writes the ops that way
    context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    from app.settings import Settings

    return context.config.get_main_option("sqlalchemy.url") or Settings().db_url


if context.is_offline_mode():  # alembic upgrade --sql: the SQL, written out, for a database nobody can reach from here
    context.configure(url=database_url(), target_metadata=SQLModel.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := context.config.attributes.get("connection")) is not None:
    run_on(connection)
else:
    from app.db import make_engine

    engine = make_engine(database_url())
    with engine.begin() as connection:
        run_on(connection)
    engine.dispose()
