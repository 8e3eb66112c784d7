import pytest
from sqlalchemy import text

from app.db import make_engine


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://", "sqlite:///file::memory:?cache=shared"])
def test_an_in_memory_database_is_refused_with_what_to_set_instead(url):
    with pytest.raises(ValueError, match="in-memory SQLite database.*set LAYERSYNC_DATABASE_URL to a file"):
        make_engine(url)


def test_a_file_database_gets_its_folder_and_its_pragmas(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'layersync.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
    assert (tmp_path / "new").is_dir()
