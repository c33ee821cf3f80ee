"""Semantic Tube Prediction losses from the final hidden states of the same forward pass.

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

from titan_jepa.data.batch import StpSpans


def pair_vectors(hidden: torch.Tensor, spans: StpSpans) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, predicting) vectors, each (P, D), from hidden (B, S, D)."""
    flat = hidden.flatten(0, 1).float()
    n = spans.weight.shape[0]
    terms = flat[spans.index] * spans.coef[:, None]
    vec = torch.zeros(2 * n, flat.shape[1], dtype=flat.dtype, device=flat.device)
    vec = vec.index_add(0, spans.slot, terms).view(n, 2, -1)
    return vec[:, 0], vec[:, 1]


def tube_loss_sum(target: torch.Tensor, predicting: torch.Tensor, weight: torch.Tensor,
                  predictor: nn.Module | None = None) -> torch.Tensor:
    if predictor is not None:
        predicting = predictor(predicting.to(predictor.weight.dtype)).float()
    cos = F.cosine_similarity(predicting, target, dim=-1)
    return (weight * (1.0 - cos)).sum()


def curvature_sum(hidden: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Sum over triples (i-2, i-1, i) of the angle between the two successive steps."""
    flat = hidden.flatten(0, 1).float()
    a, b, c = flat[triples[:, 0]], flat[triples[:, 1]], flat[triples[:, 2]]
    cos = F.cosine_similarity(c - b, b - a, dim=-1)
    # clamp inside (-1, 1): acos has an infinite gradient at the ends
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).sum()
