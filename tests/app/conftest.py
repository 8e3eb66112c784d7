import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.utils.databases import APP_DATABASE_ENV, fresh_database
from tests.utils.server import app_settings


@pytest.fixture(autouse=True)
def database_url(postgres_template, tmp_path, monkeypatch, _no_database_url_from_outside):
    """This test's database URL: SQLite in its data dir, or a PostgreSQL database of its own (handed to
    every server and Settings it makes through LAYERSYNC_DATABASE_URL; see tests/utils/databases.py)."""
    if postgres_template is None:
        yield f"sqlite:///{tmp_path / 'data' / 'layersync.db'}"
        return
    with fresh_database(postgres_template) as url:
        monkeypatch.setenv(APP_DATABASE_ENV, url)
        yield url


@pytest.fixture
def settings(tmp_path):
    return app_settings(tmp_path / "data")


@pytest.fixture
def client(settings):
    """The app on a fresh data dir, lifespan running, no worker slots (runs stay queued)."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def engine(database_url):
    """A fresh database with the schema, no server."""
    from app.db import create_schema, make_engine

    engine = make_engine(database_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def running_run(engine, tmp_path):
    """A run marked running whose output folder exists (its events file not yet)."""
    from sqlmodel import Session

    from app.models import Run

    output_dir = tmp_path / "data" / "runs" / "1"
    output_dir.mkdir(parents=True)
    with Session(engine) as session:
        run = Run(name="followed", config={"max_train_steps": 10}, status="running", output_dir=str(output_dir))
        session.add(run)
        session.commit()
        session.refresh(run)
        return run
