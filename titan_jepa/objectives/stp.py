"""Semantic Tube Prediction (``[stp]``): a JEPA-style loss from one sequence's own hidden
states, lambda * the mean over span pairs (or token triples for curvature).

The objective: ``collate`` samples the spans of each micro-batch (data/spans.py; for the
mask ablation, ``wrap_samples`` adds the masked and span views), its items are the pairs (or
triples), and its head is the optional linear predictor.

The data pipeline (data/spans.py) turns each sampled span into two vectors built from
hidden states: the target side (the span's displacement h[t-1] - h[s-1]; for e2e the
assistant's displacement; for the mask ablation the span view's embedding) and the
predicting side (the displacement of the rest of the sequence, before + after; the user's
displacement; the masked view's embedding). The loss of a pair is

    weight * (1 - cos(P(predicting), target))

with P the optional bias-free linear predictor (identity otherwise; a module of the
objective's heads, objectives/heads.py, not of the model). ``curvature`` is the
mean over successive token triples of acos(cos(h_i - h_{i-1}, h_{i-1} - h_{i-2})).
Both return sums, divided by a global count by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from titan_jepa.data.spans import MaskViews, StpSpans, mask_view_spans, stp_spans
from titan_jepa.data.special_tokens import MASK_TOKEN
from titan_jepa.objectives.base import Objective, Term, hidden_at, own_items

PREDICTOR = "stp_predictor"  # the name of the head (and of its checkpoint entries)


def _flat_rows(hidden, index: torch.Tensor) -> torch.Tensor:
    """(T, D) float32 hidden states at flat indices (row * S + column)."""
    seq = hidden.shape[1]
    return hidden_at(hidden, index // seq, index % seq).float()


def pair_vectors(hidden: torch.Tensor, spans: StpSpans) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, predicting) vectors, each (P, D), from hidden (B, S, D)."""
    n = spans.weight.shape[0]
    terms = _flat_rows(hidden, spans.index) * spans.coef[:, None]
    vec = torch.zeros(2 * n, terms.shape[1], dtype=terms.dtype, device=terms.device)
    vec = vec.index_add(0, spans.slot, terms).view(n, 2, -1)
    return vec[:, 0], vec[:, 1]


def tube_loss_sum(target: torch.Tensor, predicting: torch.Tensor, weight: torch.Tensor,
                  predictor: nn.Module | None = None) -> torch.Tensor:
    if predictor is not None:
        predicting = predictor(predicting.to(predictor.weight.dtype)).float()
    cos = F.cosine_similarity(predicting, target, dim=-1)
    return (weight * (1.0 - cos)).sum()


def curvature_sum(hidden: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Sum over triples (i-2, i-1, i) of the angle between the two successive steps (this
    process's share of them, ``own_items``)."""
    mine = own_items(hidden, triples.shape[0])
    a, b, c = (_flat_rows(hidden, triples[:, j])[mine] for j in range(3))
    cos = F.cosine_similarity(c - b, b - a, dim=-1)
    # clamp inside (-1, 1): acos has an infinite gradient at the ends
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).sum()


class Stp(Objective):
    """``[stp]``: lambda * (1 - cos) between a span's displacement and the rest's (or the
    curvature of the hidden-state path)."""

    name = "stp"

    def __init__(self, cfg):
        """``cfg``: the [stp] section."""
        self.cfg, self.weight = cfg, cfg.lambda_
        self.adds_segments = cfg.mode == "random_span_mask"

    def special_tokens(self) -> list[str]:
        return [MASK_TOKEN] if self.cfg.mode == "random_span_mask" else []

    def wrap_samples(self, encode, ctx):
        if self.cfg.mode != "random_span_mask":
            return encode
        return MaskViews(encode, self.cfg, ctx.tokenizer, ctx.seq_len, ctx.seed, ctx.slot, ctx.bad)

    def collate(self, batch, rows, ctx, index):
        if self.cfg.mode == "random_span_mask":
            spans = mask_view_spans(rows, ctx.seq_len)
        else:  # spans depend only on (seed, slot, batch index)
            spans = stp_spans(batch, self.cfg, ctx.seed, ctx.slot, index)
        items = spans.triples.shape[0] if self.cfg.mode == "curvature" else spans.weight.shape[0]
        return spans, items

    def heads(self, dim: int) -> dict[str, nn.Module]:
        return {PREDICTOR: nn.Linear(dim, dim, bias=False)} if self.cfg.linear_predictor else {}

    def loss(self, outputs, batch, heads, gather=None, rank=0) -> Term:
        spans = batch.record(self.name)
        if self.cfg.mode == "curvature":
            return Term(curvature_sum(outputs.hidden, spans.triples))
        target, predicting = pair_vectors(outputs.hidden, spans)
        mine = own_items(outputs.hidden, target.shape[0])
        predictor = heads[PREDICTOR] if heads is not None and PREDICTOR in heads else None
        return Term(tube_loss_sum(target[mine], predicting[mine], spans.weight[mine], predictor))

    def head_flops(self, items: float, dim: int) -> float:
        return 6.0 * dim * dim * items if self.cfg.linear_predictor else 0.0
