"""Pipeline parallelism (titan_jepa/parallel/pipeline.py) on gloo equals one process: next-token,
LLM-JEPA, STP with its linear predictor, interleaved virtual stages, PP x FSDP and PP x TP."""

import pytest

from helpers import launch, tiny_config


def _cfg(tmp_path, demo_dir, **sections):
    # global batch 8 = 4 micro-batches of 2 rows: 4 >= pp stages, a multiple of pp = 2
    sections.setdefault("training", {})
    sections["training"] = {"local_batch_size": 2, **sections["training"]}
    return tiny_config(tmp_path, demo_dir, **sections)


@pytest.fixture(scope="module")
def single_losses(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return launch(1, _cfg(tmp, demo_dir), tmp)


def test_pp2_1f1b_equals_one(single_losses, demo_dir, tmp_path):
    losses = launch(2, _cfg(tmp_path, demo_dir, parallelism={"pp": 2}), tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)
