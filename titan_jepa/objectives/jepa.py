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


def effective_rank(x: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the normalised singular values) of an (M, D) matrix (RankMe; not
    centred): p_i = s_i / sum(s), erank = exp(-sum p_i log p_i); 1 for rank one, min(M, D)
    for equal singular values, 0 for M = 0 or a zero matrix."""
    if x.shape[0] == 0:
        return torch.zeros((), dtype=torch.float64, device=x.device)
    s = torch.linalg.svdvals(x.double())
    total = s.sum()
    p = s / total.clamp(min=torch.finfo(torch.float64).tiny)
    erank = torch.exp(-torch.special.xlogy(p, p).sum())
    return torch.where(total > 0, erank, torch.zeros_like(erank))


def collapse_stats(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostics of the (M, D) Pred and Target embeddings of one step, as a float64
    tensor [pred_std, target_std, pred_erank, target_erank]: the per-dimension standard
    deviation across the M samples (population, /M), averaged over the D dims, and the
    effective rank (``effective_rank``). A metric: no gradient, no host read."""
    with torch.no_grad():
        out = []
        for x in (pred, target):
            x = x.double()
            out.append(x.std(dim=0, correction=0).mean() if x.shape[0] else x.new_zeros(()))
        out += [effective_rank(pred), effective_rank(target)]
        return torch.stack(out)


COLLAPSE_METRICS = ("jepa_pred_std", "jepa_target_std", "jepa_pred_erank", "jepa_target_erank")
