"""JEPA collapse diagnostics: per-dimension std and effective rank of Pred/Target embeddings,
equal to a direct numpy computation, logged on log steps only, the same on 2 FSDP ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import launch, tiny_config
from titan_jepa.config import load_config
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.objectives import Objectives, build_objectives
from titan_jepa.objectives.jepa import COLLAPSE_METRICS, collapse_stats, effective_rank, view_embeddings


def numpy_stats(pred: np.ndarray, target: np.ndarray) -> list[float]:
    def erank(x):
        s = np.linalg.svd(x, compute_uv=False)
        p = s / s.sum()
        p = p[p > 0]
        return float(np.exp(-(p * np.log(p)).sum()))
    return [pred.std(axis=0).mean(), target.std(axis=0).mean(), erank(pred), erank(target)]


def test_collapse_stats_equal_numpy():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g) * 3 + 1
    got = collapse_stats(pred, target).tolist()
    assert got == pytest.approx(numpy_stats(pred.double().numpy(), target.double().numpy()), rel=1e-10)
    # the limits: a rank-one matrix, equal singular values, nothing
    assert float(effective_rank(torch.ones(5, 3))) == pytest.approx(1.0)
    assert float(effective_rank(torch.eye(6))) == pytest.approx(6.0)
    assert float(effective_rank(torch.zeros(0, 4))) == 0.0 and float(effective_rank(torch.zeros(3, 4))) == 0.0
    collapsed = torch.ones(7, 8) * torch.arange(8.0)  # every sample the same vector
    s = collapse_stats(collapsed, collapsed).tolist()
    assert s[0] == 0.0 and s[2] == pytest.approx(1.0)


def jepa_run(demo_dir, tmp_path, **sections):
    return tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl"),
                                                 "loss_on": "all"},
                       training={"steps": 4, "seq_len": 256, "local_batch_size": 4, "global_batch_size": 8},
                       metrics={"log_freq": 2}, jepa={"enable": True, "k": 1}, **sections)


def test_objective_collapse_metrics_on_a_known_batch(demo_dir, tmp_path):
    cfg = load_config(extra=jepa_run(demo_dir, tmp_path))
    tok = build_tokenizer(cfg.tokenizer)
    model = build_model(model_args_for("debug"), "meta")
    model.to_empty(device="cpu")
    model.init_weights(0)
    loader = build_dataloader(cfg, tok)
    mbs = [next(loader).to("cpu"), next(loader).to("cpu")]
    obj = Objectives(build_objectives(cfg))
    counts = torch.stack([mb.count_vector for mb in mbs]).sum(0)
    assert obj(model(mbs[0].tokens, **mbs[0].mask_inputs()), mbs[0], counts).kept == {}  # nothing kept unless asked
    kept = [obj(model(mb.tokens, **mb.mask_inputs()), mb, counts, keep=True).kept for mb in mbs]
    got = obj.diagnostics(kept, None)
    with torch.no_grad():
        parts = []
        for mb in mbs:
            _, hidden = model(mb.tokens, positions=mb.positions, segment_ids=mb.segment_ids,
                              context_segment=mb.context_segment, context_len=mb.context_len)
            parts.append(view_embeddings(hidden, mb.record("jepa").pred, mb.record("jepa").target))
    pred = torch.cat([p for p, _ in parts]).double().numpy()
    target = torch.cat([t for _, t in parts]).double().numpy()
    assert pred.shape[0] == int(obj.count(counts, "jepa")) > 2
    assert [got[k] for k in COLLAPSE_METRICS] == pytest.approx(numpy_stats(pred, target), rel=1e-5)
    assert 1.0 < got["jepa_pred_erank"] <= min(pred.shape)


def test_collapse_metrics_logged_and_equal_on_two_fsdp_ranks(demo_dir, tmp_path):
    rows = {}
    for world in (1, 2):
        cfg = jepa_run(demo_dir, tmp_path, job={"name": f"w{world}", "dump_folder": str(tmp_path), "seed": 0},
                       parallelism={"dp_shard": world})
        launch(world, cfg, tmp_path)
        lines = (tmp_path / f"w{world}" / "metrics.jsonl").read_text().splitlines()
        rows[world] = [json.loads(x) for x in lines]
    one, two = rows[1], rows[2]
    assert [r["step"] for r in one] == [2, 4]  # log steps only
    for a, b in zip(one, two):
        for k in COLLAPSE_METRICS:
            assert a[k] > 0 and a[k] == pytest.approx(b[k], rel=1e-4), k
    assert one[0]["jepa_pred_erank"] != one[1]["jepa_pred_erank"]  # a number of the step, not a constant


def test_plot_metrics_draws_the_collapse_panels(tmp_path):
    import sys
    from pathlib import Path

    import matplotlib.pyplot as plt

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import plot_metrics

    rows = [{"step": s, "loss": 3.0 / s, "jepa_pred_std": 0.5 / s, "jepa_target_std": 0.6 / s,
             "jepa_pred_erank": 10.0 / s, "jepa_target_erank": 12.0 / s} for s in range(1, 5)]
    path = tmp_path / "run" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = {}
    savefig = plt.Figure.savefig

    def spy(fig, out, **kw):  # record each panel's lines before saving
        drawn.update({ax.get_title(): [list(line.get_ydata()) for line in ax.get_lines()] for ax in fig.axes})
        return savefig(fig, out, **kw)

    plt.Figure.savefig = spy
    try:
        plot_metrics.main([str(path), "-o", str(tmp_path / "p.png")])
    finally:
        plt.Figure.savefig = savefig
    assert drawn["JEPA embedding std (per dim, mean)"] == [[r["jepa_pred_std"] for r in rows],
                                                           [r["jepa_target_std"] for r in rows]]
    assert drawn["JEPA effective rank"] == [[r["jepa_pred_erank"] for r in rows],
                                            [r["jepa_target_erank"] for r in rows]]
