import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import demo_data  # noqa: E402


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"))
