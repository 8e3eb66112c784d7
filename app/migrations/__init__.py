"""The database's schema history (Alembic), and bringing a database to its newest revision on start.

``upgrade(engine)`` needs no alembic.ini: the scripts ship inside this package. For the alembic
command line (a new revision, ``current``, ``history``): ``alembic -c app/migrations/alembic.ini ...``,
on the database the server's settings name (``LAYERSYNC_DATABASE_URL`` or ``DATA_DIR/layersync.db``).
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
FIRST_REVISION = "0001"  # the schema as it was before migrations: a database made then is stamped here
FIRST_TABLES = {"run", "metric", "metricblock", "runevent"}

# versions before migrations added these nullable columns to an existing database on start, so a
# database made before they existed, and never started since, lacks them
LATE_COLUMNS = {("run", "pid_started"): sa.Integer(), ("run", "queued_at"): sa.DateTime()}


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest revision: an empty one gets every table; one made before
    migrations (tables, no alembic_version) is taken as the first revision, then upgraded; one at
    the newest revision is left as it is."""
    with engine.begin() as connection:
        config = alembic_config(connection)
        tables = set(sa.inspect(connection).get_table_names())
        if "alembic_version" not in tables and tables & FIRST_TABLES:
            _adopt(connection, tables)
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


def _adopt(connection: Connection, tables: set[str]) -> None:
    """Check that a database made before migrations has the first revision's tables, and add the
    late columns it may lack."""
    missing = sorted(FIRST_TABLES - tables)
    if missing:
        url = connection.engine.url.render_as_string(hide_password=True)
        raise RuntimeError(f"the database {url} has some of LayerSync's tables but not {', '.join(missing)}: it was not "
                           "made by LayerSync Studio, or is damaged; point LAYERSYNC_DATABASE_URL at another database "
                           "(or move this file away) to start with an empty one")
    operations, inspector = Operations(MigrationContext.configure(connection)), sa.inspect(connection)
    have = {(table, column["name"]) for table in FIRST_TABLES for column in inspector.get_columns(table)}
    for (table, column), kind in LATE_COLUMNS.items():
        if (table, column) not in have:
            operations.add_column(table, sa.Column(column, kind, nullable=True))
