import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.utils.factories import make_tiny_demo_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny 16-block demo model on disk, shared read-only by the tests of a session."""
    return make_tiny_demo_model(tmp_path_factory.mktemp("tiny_demo"))
