"""The LLM-JEPA loss: d(Pred(Enc(Text)), Enc(Code)) from the final normed hidden states.

The objective knows nothing about parallelism: InfoNCE's negatives from other ranks come
through a ``gather`` callable (a differentiable all-gather supplied by the caller); with
``gather=None`` the negatives are the local micro-batch's.

Every distance returns a *sum* over samples, so the caller can divide by the number of
JEPA samples summed over the data-parallel group and the micro-batches.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def view_embeddings(hidden: torch.Tensor, pred_idx: torch.Tensor, target_idx: torch.Tensor):
    """hidden (B, S, D); indices (M, 2) of (row, column) -> two (M, D) tensors."""
    pred = hidden[pred_idx[:, 0], pred_idx[:, 1]]
    target = hidden[target_idx[:, 0], target_idx[:, 1]]
    return pred, target


def jepa_distance_sum(pred: torch.Tensor, target: torch.Tensor, distance: str,
                      temperature: float = 0.07,
                      gather: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
                      rank: int = 0) -> torch.Tensor:
    """Sum over the M local samples of the distance between pred and target (M, D).

    cosine:  1 - cos(pred, target)
    l2:      ||pred - target||_2
    mse:     mean over features of (pred - target)^2
    infonce: both sides L2-normalised, logits = pred @ targets.T / temperature, cross
             entropy against each sample's own target; the targets are those of every
             rank when ``gather`` is given (rank = this rank's index in its result).
    """
    pred, target = pred.float(), target.float()
    if distance == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).sum()
    if distance == "l2":
        return torch.linalg.vector_norm(pred - target, ord=2, dim=-1).sum()
    if distance == "mse":
        return (pred - target).pow(2).mean(dim=-1).sum()
    if distance == "infonce":
        u, a = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
        offset = 0
        if gather is not None:
            parts = gather(a)
            offset = sum(p.shape[0] for p in parts[:rank])
            a = torch.cat(parts, dim=0)
        logits = u @ a.T / temperature
        labels = torch.arange(u.shape[0], device=u.device) + offset
        return F.cross_entropy(logits, labels, reduction="sum")
    raise ValueError(f"unknown JEPA distance '{distance}'; use cosine, l2, mse or infonce")


def cosine_sum(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of cos(pred, target), a metric (no gradient)."""
    with torch.no_grad():
        return F.cosine_similarity(pred.float(), target.float(), dim=-1).sum()
