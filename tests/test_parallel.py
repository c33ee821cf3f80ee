"""FSDP2, TP+SP and HSDP on gloo give the losses of one process at the same global batch."""

import pytest

from helpers import launch, tiny_config


@pytest.fixture(scope="module")
def single_losses(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    # global batch 8 = 4 slots of 2 rows; one process runs them as 4 micro-batches
    cfg = tiny_config(tmp, demo_dir, training={"local_batch_size": 2})
    return launch(1, cfg, tmp)


def test_single_process_is_deterministic(single_losses, demo_dir, tmp_path):
    again = launch(1, tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2}), tmp_path)
    assert again == single_losses


def test_fsdp_two_ranks_equals_one(single_losses, demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2})
    losses = launch(2, cfg, tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)


def test_tp_two_ranks_equals_one(single_losses, demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2}, parallelism={"tp": 2})
    losses = launch(2, cfg, tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)


def test_hsdp_2x2_equals_one(single_losses, demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2},
                      parallelism={"dp_replicate": 2, "dp_shard": 2})
    losses = launch(4, cfg, tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("parallelism", [{"dp_shard": 2}, {"tp": 2}], ids=["fsdp", "tp"])
def test_tied_embeddings_stay_tied(demo_dir, tmp_path, parallelism):
    """Llama-3.2-style tied embeddings: 2 ranks equal 1 rank, and the weights stay shared."""
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2, "steps": 3},
                      model={"flavor": "small", "vocab_size": 2304})
    single = launch(1, cfg, tmp_path)
    losses = launch(2, dict(cfg, parallelism=parallelism), tmp_path)
    assert losses == pytest.approx(single, rel=1e-4)
