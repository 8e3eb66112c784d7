import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.utils.databases import APP_DATABASE_ENV, on_postgres, template_database  # noqa: E402
from tests.utils.factories import make_tiny_demo_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny 16-block demo model on disk, shared read-only by the tests of a session."""
    return make_tiny_demo_model(tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture(scope="session")
def postgres_template():
    """The migrated database each test's PostgreSQL database copies; None on SQLite."""
    if not on_postgres():
        yield None
        return
    with template_database() as name:
        yield name


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.sqlite_only``: a test of SQLite's own behaviour (its file, its lock, its pragmas)
    is skipped, with that reason, when the suite runs against PostgreSQL."""
    if not on_postgres():
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.args[0] if marker.args else "tests SQLite's own behaviour"
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture(autouse=True)
def _no_database_url_from_outside(monkeypatch):
    """A LAYERSYNC_DATABASE_URL of the shell running the tests must not reach their servers."""
    monkeypatch.delenv(APP_DATABASE_ENV, raising=False)
