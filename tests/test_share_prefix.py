"""data.share_prefix: a view segment whose unlabelled first tokens repeat an earlier segment of
its row reads them from there (data/packing.py add_sample). The row's tokens, labels, marks
and masks are checked here against the untrimmed row; the losses and gradients are equal on the
real SmolLM2 weights (tests/test_smollm2.py) and in every parallel layout of the golden
losses (tests/golden.py: 1 process, FSDP 2, TP 2, PP 2, 10 steps each)."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import tiny_config
from titan_jepa.config import load_config
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.objectives import build_objectives
from titan_jepa.objectives.base import Objectives
from titan_jepa.parallel.schedule import LocalRunner

from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.packing import BestFitPacker, Row, SamplePacker, add_sample, collate
from titan_jepa.data.sample import Sample, Segment
from titan_jepa.models.attention import MaskMeta, dense_mask

X = IGNORE_INDEX
HEAD = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109]  # a 10-token template header


def view_sample(full, text, code, k=0):
    """full (labelled) + Text view + Code view, both starting with HEAD; marks at each
    view's last token."""
    t, c = HEAD + text, HEAD + code
    segs = [Segment(full, full[1:] + [X]), Segment(t, [X] * len(t)), Segment(c, [X] * len(c))]
    s = Sample(ids=full, labels=full[1:] + [X], segments=segs)
    s.marks["jepa"] = [len(full) + len(t) - 1, len(full) + len(t) + len(c) - 1]
    return s


def visible(row: Row, seq_len: int):
    """What every real query attends to, as the (token, position) of its keys."""
    b = collate([copy.deepcopy(row).pad_to(seq_len, 0)], 1, seq_len, 0)
    meta = MaskMeta(b.segment_ids, b.positions, b.context_segment, b.context_len)
    m = dense_mask(meta, seq_len, torch.device("cpu"))[0, 0]
    tok, pos = b.tokens[0].tolist(), b.positions[0].tolist()
    return [[(tok[k], pos[k]) for k in range(seq_len) if m[q, k]] for q in range(seq_len)]


def test_views_read_the_shared_header_and_marks_follow():
    a = view_sample([1, 2, 3, 4], [20, 21], [30, 31, 32])
    b = view_sample([5, 6, 7], [22, 23, 24], [33])
    plain, shared = Row(), Row()
    for s in (a, b):
        add_sample(plain, s)
        add_sample(shared, s, share_prefix=8)
    # a's Text view is the first segment with the header; a's Code view and all of b's views read it
    assert len(plain.tokens) - len(shared.tokens) == 3 * len(HEAD)
    # every token the row keeps sees the same (token, position) keys as in the untrimmed row,
    # the shared header included: its states are the same computation
    vp, vs = visible(plain, 64), visible(shared, 64)
    kept = [i for i in range(len(plain.tokens))
            if not (plain.segment_ids[i] in (2, 4, 5) and plain.positions[i] < len(HEAD))]
    assert len(kept) == len(shared.tokens)
    for i, j in zip(kept, range(len(shared.tokens))):
        assert plain.tokens[i] == shared.tokens[j] and plain.labels[i] == shared.labels[j]
        assert plain.positions[i] == shared.positions[j]
        assert sorted(vp[i]) == sorted(vs[j])
    # the recorded marks point at the same tokens (the views' last tokens)
    for (_, s0, p), (_, s1, q) in zip(plain.samples, shared.samples):
        assert [plain.tokens[s0 + m] for m in p.marks["jepa"]] == [shared.tokens[s1 + m] for m in q.marks["jepa"]]
    assert shared.samples[1][2].marks["jepa"] == [3 + 3 - 1, 3 + 3 + 1 - 1]  # b: 3 + (Text 3) + (Code 1)
    assert [len(x.ids) for x in shared.samples[1][2].segments] == [3, 3, 1]
    assert b.marks["jepa"] == [3 + 13 - 1, 3 + 13 + 11 - 1]  # the sample itself is untouched


def test_what_is_never_trimmed():
    # labelled tokens: a view whose header carries a label keeps it
    a = view_sample([1, 2, 3], [20], [30])
    labelled = view_sample([4, 5], [21], [31])
    labelled.segments[1].labels[3] = 7
    row = Row()
    add_sample(row, a, 8)
    add_sample(row, labelled, 8)
    assert [len(s.ids) for s in row.samples[1][2].segments] == [2, 11, 1]  # Text cut short of the label: 3 < 8
    # a mark inside the header stops the cut before it; shorter than share_prefix: no cut
    marked = view_sample([4, 5], [21], [31])
    marked.marks["stp"] = [2 + 5, 2 + 11 + 9]
    row = Row()
    add_sample(row, a, 8)
    add_sample(row, marked, 8)
    assert [len(s.ids) for s in row.samples[1][2].segments] == [2, 11, 2]  # Code: cut before its mark (9)
    assert row.samples[1][2].marks["stp"] == [7, 2 + 11 + 0]
    # the full sequence (first segment) and a segment that is another's context stay whole
    ctx = Sample(ids=HEAD + [1], labels=[X] * 11, full_segments=1,
                 segments=[Segment(HEAD + [1], [X] * 11), Segment(HEAD + [2], [X] * 11),
                           Segment([9], [X], 11, 1, 11)])
    row = Row()
    add_sample(row, a, 8)
    add_sample(row, ctx, 8)
    assert [len(s.ids) for s in row.samples[1][2].segments] == [11, 11, 1]
    # share_prefix 0: nothing is cut
    row = Row()
    for s in (a, view_sample([4], [21], [31])):
        add_sample(row, s, 0)
    assert row.context_segment is None and len(row.tokens) == len(a) + 1 + 11 + 11


def test_rows_hold_the_same_samples_with_and_without_sharing():
    samples = [view_sample(list(range(1, 2 + i % 7)), [20 + i % 5] * (1 + i % 4), [30] * (1 + i % 3))
               for i in range(40)]

    def rows(packer_cls, share, **kw):
        it = iter(samples)
        p = packer_cls(96, 0, lambda: next(it, None), share_prefix=share, **kw)
        return [[tuple(x[2].ids) for x in r.samples] for r in iter(p.next_row, None)]

    for cls, kw in ((SamplePacker, {}), (BestFitPacker, {"buffer": 16})):
        assert rows(cls, 0, **kw) == rows(cls, 8, **kw), cls.__name__


KINDS = {  # the view segments the loader makes: LLM-JEPA's (k predictor tokens), STP's mask views
    "jepa_separate": {"jepa": {"enable": True, "k": 2}},
    "stp_span_mask": {"stp": {"enable": True, "mode": "random_span_mask"}},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_losses_and_gradients_equal_whole_views(demo_dir, tmp_path, kind):
    """Through the loader and the objectives, on the debug model: the same samples per row, the
    same loss sums, the same gradients, fewer tokens run."""
    out = {}
    for share in (0, 8):
        cfg = load_config(extra=tiny_config(
            tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl"), "share_prefix": share},
            training={"seq_len": 512, "local_batch_size": 2}, **KINDS[kind]))
        batch = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
        model = build_model(model_args_for("debug"), "meta")
        model.to_empty(device="cpu")
        model.init_weights(0)
        objectives, counts = Objectives(build_objectives(cfg)), batch.counts.vector()
        (result,) = LocalRunner(model, head_on_targets=True, drop_padding=True).run(
            [batch], lambda o, mb: (objectives(o, mb, counts).loss, objectives(o, mb, counts)))
        out[share] = (batch, result.sums, {n: p.grad for n, p in model.named_parameters()})
    (b0, s0, g0), (b1, s1, g1) = out[0], out[8]
    assert torch.equal(b0.samples.table[:, 0], b1.samples.table[:, 0]) and b0.counts.items == b1.counts.items
    assert b1.tokens_at.numel() < b0.tokens_at.numel(), (b0.tokens_at.numel(), b1.tokens_at.numel())
    torch.testing.assert_close(s1, s0, rtol=1e-6, atol=1e-9)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, atol=1e-6, rtol=1e-4, msg=name)
