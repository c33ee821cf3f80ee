"""Best-fit-decreasing packing (data.pack_buffer > 1): every sample once per epoch, never split,
typed batch fields right, deterministic, resumable exactly, less padding than greedy."""

from __future__ import annotations

import io
from collections import Counter

import pytest
import torch

from titan_jepa.config import ConfigError, JobConfig, validate
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.sample import Sample
from titan_jepa.data.packing import BestFitPacker, SamplePacker
from test_data import check_row_invariants, demo, make_cfg, take, tok  # noqa: F401 (fixtures)


def jepa_cfg(path, views, **data):
    cfg = make_cfg(path, "chat", seq_len=256, bs=3, **data)
    cfg.jepa.enable, cfg.jepa.views = True, views
    return cfg


def sample_keys(batches):
    """One key per sample: its Text and Code ids, the tokens at its JEPA pair (when any)."""
    keys = []
    for b in batches:
        pred = b.record("jepa").pred.tolist() if b.record("jepa") is not None else []
        target = b.record("jepa").target.tolist() if b.record("jepa") is not None else []
        for j in range(len(b.samples.text_ids)):
            pair = ()
            if pred:
                (pr, pc), (tr, tc) = pred[j], target[j]
                pair = (int(b.tokens[pr, pc]), int(b.tokens[tr, tc]))
            keys.append((tuple(b.samples.text_ids[j]), tuple(b.samples.code_ids[j]), pair))
    return keys


def pad_tokens(b, pad_id):
    used = sum(int(n) for n in b.samples.table[:, 3].tolist())  # the samples' own tokens
    return b.tokens.numel() - used


@pytest.mark.parametrize("views", [None, "separate", "shared_prefix"])
def test_bestfit_every_sample_once_with_right_fields(demo, tok, views):  # noqa: F811
    path = demo / "regex_train.jsonl"
    cfg = jepa_cfg(path, views, num_epochs=1) if views else make_cfg(path, "chat", seq_len=256, bs=3, num_epochs=1)
    greedy = list(build_dataloader(cfg, tok))
    cfg.data.pack_buffer = 16
    best = list(build_dataloader(cfg, tok))
    # the same samples (and the same JEPA pair tokens), each exactly once, over the whole epoch
    kg, kb = sample_keys(greedy), sample_keys(best)
    assert len(kb) == 300 and Counter(kb) == Counter(kg)
    assert kb != kg  # (best-fit reorders the samples)
    if views:
        assert all(k[2] for k in kb)  # every sample has its JEPA pair
    for b in best:
        for r in range(b.tokens.shape[0]):
            if views != "shared_prefix":
                check_row_invariants(b, r, 256)
            else:  # a view segment's positions continue its context's: +1 within each segment
                seg, pos = b.segment_ids[r], b.positions[r]
                same = seg[1:] == seg[:-1]
                assert (pos[1:][same] == pos[:-1][same] + 1).all()
        # the sample table's spans hold whole samples at segment starts
        for row, seg, start, length, *_ in b.samples.table.tolist():
            assert b.positions[row, start] == 0 and (b.segment_ids[row, start:start + length] >= seg).all()
        assert b.counts.samples == b.samples.table.shape[0]
        if views:
            assert b.counts.items["jepa"] == b.record("jepa").pred.shape[0] == b.samples.table.shape[0]
    pad_g = sum(pad_tokens(b, tok.pad_id) for b in greedy) / sum(b.tokens.numel() for b in greedy)
    pad_b = sum(pad_tokens(b, tok.pad_id) for b in best) / sum(b.tokens.numel() for b in best)
    assert pad_b < pad_g and len(best) <= len(greedy)


def test_bestfit_deterministic_and_resumable(demo, tok):  # noqa: F811
    cfg = jepa_cfg(demo / "regex_test.jsonl", "separate", pack_buffer=8, shuffle_buffer=8)  # crosses epochs
    n, m = 5, 9
    full = take(build_dataloader(cfg, tok, 1, 2), n + m)
    again = take(build_dataloader(cfg, tok, 1, 2), n + m)
    first = build_dataloader(cfg, tok, 1, 2)
    take(first, n)
    assert first.packer.open or first.packer.done  # resumed mid-round: rows in the state
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = build_dataloader(cfg, tok, 1, 2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rest = take(resumed, m)
    assert len(rest) == m
    for a, b in zip(full, again):
        assert torch.equal(a.tokens, b.tokens)
    for a, b in zip(full[n:], rest):
        for f in ("tokens", "labels", "positions", "segment_ids"):
            assert torch.equal(getattr(a, f), getattr(b, f))
        assert torch.equal(a.record("jepa").pred, b.record("jepa").pred) and torch.equal(a.record("jepa").target, b.record("jepa").target)
        assert torch.equal(a.samples.table, b.samples.table) and a.counts == b.counts


def test_bestfit_packer_unit():
    """Lengths 5, 3, 3, 2, 2, 1 into rows of 8, buffer 6: BFD gives [5, 3], [3, 2, 2, 1]."""
    lengths = iter([3, 5, 2, 3, 1, 2])
    def nxt():
        n = next(lengths, None)
        return None if n is None else Sample([n] * n, [-100] * n)
    p = BestFitPacker(8, 0, nxt, buffer=6)
    rows = [[len(s.ids) for _, _, s in r.samples] for r in iter(p.next_row, None)]
    assert rows == [[5, 3], [3, 2, 2, 1]]
    with pytest.raises(ValueError, match="does not fit"):
        BestFitPacker(4, 0, lambda: Sample([1] * 5, [1] * 5), buffer=2).next_row()
    # the greedy packer for comparison: stream order, 3 rows
    lengths = iter([3, 5, 2, 3, 1, 2])
    g = SamplePacker(8, 0, nxt)
    assert [[len(s.ids) for _, _, s in r.samples] for r in iter(g.next_row, None)] == [[3, 5], [2, 3, 1, 2]]


def test_pack_buffer_config_checks():
    cfg = JobConfig()
    cfg.data.pack_buffer = -1
    with pytest.raises(ConfigError, match="pack_buffer"):
        validate(cfg)
    cfg.data.pack_buffer = 8  # kind = "text"
    with pytest.raises(ConfigError, match="pack_buffer = 0"):
        validate(cfg)
