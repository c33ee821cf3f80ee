"""The objective seam: a new auxiliary objective, defined here and nowhere in the package,
trains beside next-token on one process, FSDP 2 and PP 2 with the same losses: its term, its
head (a linear map, on the last pipeline stage), its item count and its logged metric all go
through the protocol of titan_jepa/objectives/base.py."""

import json

import pytest
from torch import nn

from helpers import launch, tiny_config
from titan_jepa.config import load_config
from titan_jepa.objectives import Objective, Term, build_objectives


class HiddenL2(Objective):
    """weight * mean over tokens of ||P h||^2 / dim, P a trainable square head (identity at start)."""

    name = "l2"

    def __init__(self, weight: float):
        self.weight = weight

    def collate(self, batch, rows, ctx, index):
        return None, batch.tokens.numel()  # its items: every token of the micro-batch

    def heads(self, dim):
        return {"l2_proj": nn.Linear(dim, dim, bias=False)}

    def loss(self, outputs, batch, heads, gather=None, rank=0):
        proj = heads["l2_proj"](outputs.hidden.to(heads["l2_proj"].weight.dtype)).float()
        return Term(proj.pow(2).mean(-1).sum())


def train_with_l2(cfg_dict: dict) -> list[float]:
    from titan_jepa.train import train

    cfg = load_config(extra=cfg_dict)
    return train(cfg, objectives=[*build_objectives(cfg), HiddenL2(0.5)])


def test_a_new_objective_trains_the_same_on_one_process_fsdp_and_pp(demo_dir, tmp_path):
    base = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2, "steps": 4})
    plain = launch(1, dict(base, job=dict(base["job"], name="plain")), tmp_path)
    runs = {}
    for name, world, par in (("one", 1, {"dp_shard": 1}), ("fsdp2", 2, {"dp_shard": 2}), ("pp2", 2, {"pp": 2})):
        cfg = dict(base, parallelism=par, job=dict(base["job"], name=name))
        runs[name] = launch(world, cfg, tmp_path, fn=train_with_l2)
    assert runs["fsdp2"] == pytest.approx(runs["one"], rel=1e-5)
    assert runs["pp2"] == pytest.approx(runs["one"], rel=1e-5)
    assert runs["one"][0] != pytest.approx(plain[0], rel=1e-3)  # the term is in the loss
    row = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["l2_loss"] > 0 and row["ntp_loss"] == pytest.approx(plain[0], rel=1e-6)
    assert row["loss"] == pytest.approx(row["ntp_loss"] + 0.5 * row["l2_loss"], rel=1e-6)
