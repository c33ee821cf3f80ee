"""The CPU path's per-segment attention (models/attention.py, blocked_mask): on every mask
kind the data pipeline makes (packed documents, LLM-JEPA separate views with predictor
tokens, shared-prefix views with their context, STP on chat, STP's random_span_mask views),
the model's logits and every parameter's gradient equal the dense-mask path's; it is chosen
automatically on the CPU for rows of at least 512 tokens, and skipped under torch.compile."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_config
from titan_jepa.config import load_config
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.models.attention import BlockedMask, MaskMeta, SDPAAttention
from titan_jepa.models.llama import build_model, model_args_for

KINDS = {  # name: (data, extra config sections)
    "documents": ("corpus.jsonl", {"data": {"kind": "text"}}),
    "jepa_separate": ("regex_train.jsonl", {"data": {"kind": "chat"}, "jepa": {"enable": True, "k": 2}}),
    "jepa_shared_prefix": ("regex_train.jsonl", {"data": {"kind": "chat"},
                                                 "jepa": {"enable": True, "k": 1, "views": "shared_prefix"}}),
    "stp_chat": ("regex_train.jsonl", {"data": {"kind": "chat"}, "stp": {"enable": True}}),
    "stp_span_mask": ("regex_train.jsonl", {"data": {"kind": "chat"},
                                            "stp": {"enable": True, "mode": "random_span_mask"}}),
}


def _batch(demo_dir, tmp_path, kind):
    file, sections = KINDS[kind]
    sections = {k: dict(v) for k, v in sections.items()}
    sections["data"]["path"] = str(demo_dir / file)
    cfg = load_config(extra=tiny_config(tmp_path, demo_dir, training={"seq_len": 512, "local_batch_size": 2},
                                        **sections))
    return next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))


def _model(blocked: bool):
    model = build_model(model_args_for("debug"), "meta")
    model.to_empty(device="cpu")
    model.init_weights(0)
    model.backend = SDPAAttention(blocked=blocked)
    for layer in model.layers.values():
        layer.attention.backend = model.backend
    return model


@pytest.mark.parametrize("kind", list(KINDS))
def test_blocked_attention_equals_dense(demo_dir, tmp_path, kind):
    batch = _batch(demo_dir, tmp_path, kind)
    kwargs = dict(positions=batch.positions, segment_ids=batch.segment_ids,
                  context_segment=batch.context_segment, context_len=batch.context_len)
    if kind == "jepa_shared_prefix":
        assert batch.context_segment is not None
    meta = MaskMeta(batch.segment_ids, batch.positions, batch.context_segment, batch.context_len)
    mask = SDPAAttention(blocked=True).build_mask(meta, *batch.tokens.shape, torch.device("cpu"))
    assert isinstance(mask, BlockedMask)
    rows = batch.tokens.shape[0]
    assert len(mask.runs) > 2 * rows  # several segments per row: blocks, not whole rows
    outs, grads = [], []
    for blocked in (False, True):
        model = _model(blocked)
        logits = model(batch.tokens, **kwargs).logits
        (logits.float().square().mean() + logits[:, ::7].sum() * 1e-3).backward()
        outs.append(logits.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[1], outs[0], atol=2e-5, rtol=1e-5)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=2e-5, rtol=1e-4, msg=name)


def test_chosen_automatically_on_cpu_for_long_rows():
    seg = torch.tensor([[0] * 300 + [1] * 212])
    meta = MaskMeta(seg, torch.arange(512)[None])
    auto = SDPAAttention()
    assert isinstance(auto.build_mask(meta, 1, 512, torch.device("cpu")), BlockedMask)
    short = MaskMeta(seg[:, :256], torch.arange(256)[None])
    assert not isinstance(auto.build_mask(short, 1, 256, torch.device("cpu")), BlockedMask)
    assert not isinstance(SDPAAttention(blocked=False).build_mask(meta, 1, 512, torch.device("cpu")), BlockedMask)


@pytest.mark.parametrize("lengths", [[1, 1, 5, 7, 8, 33, 40, 2, 415], [512], [3] * 170 + [2]])
def test_length_buckets_equal_dense_attention(lengths):
    """Segments of mixed lengths (padded within a bucket, length 1, one whole-row segment),
    GQA: the attention output and dq/dk/dv equal the dense mask's."""
    seg = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None].repeat(2, 1)
    seg[1] = seg[1].flip(0)  # the second row: the same segments in reverse order
    seg = seg.to(torch.int32)
    pos = torch.zeros_like(seg, dtype=torch.int64)
    meta = MaskMeta(seg, pos)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 512, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 512, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 512, 16, generator=g, requires_grad=True)
    w = torch.randn(2, 4, 512, 16, generator=g)
    results = []
    for blocked in (False, True):
        backend = SDPAAttention(blocked=blocked)
        mask = backend.build_mask(meta, 2, 512, torch.device("cpu"))
        assert isinstance(mask, BlockedMask) == blocked
        out = backend.attend(q, k, v, mask)
        (out * w).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_unpadded_forward_equals_the_padded_one(demo_dir, tmp_path, kind):
    """The CPU training path (LocalRunner without TP): the layers on the tokens that are not
    padding (tokens_at) and the head on the labelled ones (targets_at) give the padded
    forward's logits at the targets, its hidden states at every real token, zeros at the
    padding, and the same gradient for every parameter."""
    batch = _batch(demo_dir, tmp_path, kind)
    real = batch.tokens_at
    if kind == "documents":  # documents fill their rows: make the second row's tail padding
        cut = batch.tokens.shape[1] + 300
        batch.tokens.view(-1)[cut:], batch.labels.view(-1)[cut - 1:] = 0, -100
        batch.segment_ids.view(-1)[cut:] = batch.segment_ids.max() + 1
        real = batch.tokens_at = real[:cut]
        batch.targets_at = (batch.labels.flatten() != -100).nonzero().squeeze(1)
    assert 0 < real.numel() < batch.tokens.numel()  # the batch has padding to drop
    assert torch.equal(batch.targets_at, (batch.labels.flatten() != -100).nonzero().squeeze(1))
    w = torch.randn(batch.tokens.numel(), 128, generator=torch.Generator().manual_seed(1))
    results = []
    for unpadded in (False, True):
        model = _model(None)
        extra = {"logits_at": batch.targets_at, "tokens_at": real} if unpadded else {}
        out = model(batch.tokens, **batch.mask_inputs(), **extra)
        logits = out.logits if unpadded else out.logits.flatten(0, 1)[batch.targets_at]
        hidden = out.hidden.flatten(0, 1)
        if unpadded:
            pad = torch.ones(hidden.shape[0], dtype=torch.bool)
            pad[real] = False
            assert torch.count_nonzero(hidden[pad]) == 0
        loss = logits.float().logsumexp(-1).sum() + (hidden[real] * w[real]).sum()
        loss.backward()
        results.append((logits.detach(), hidden[real].detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, h0, g0), (l1, h1, g1) = results
    torch.testing.assert_close(l1, l0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(h1, h0, atol=2e-5, rtol=1e-5)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, atol=5e-5, rtol=1e-4, msg=name)
