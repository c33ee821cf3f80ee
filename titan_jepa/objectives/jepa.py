"""LLM-JEPA: lambda * d(Pred(Enc(Text)), Enc(Code)) from the final normed hidden states.

The objective: its samples carry the Text / Code view segments (data/views.py, added by
``wrap_samples``), ``collate`` turns each sample's two embedding offsets into (row, column)
indices (``JepaIndices``), and the loss reads the two embeddings of every sample with views.
Its items are those samples; it logs mean cos(Pred, Target) (``jepa_cos``), the fraction of
samples with views (``jepa_frac``) and, on log steps, collapse diagnostics over the step's
embeddings of every data-parallel rank.

It knows nothing about parallelism: InfoNCE's negatives from other ranks come through a
``gather`` callable (a differentiable all-gather supplied by the caller); with
``gather=None`` the negatives are the local micro-batch's. Every distance returns a *sum*
over samples, so the caller can divide by the number of JEPA samples summed over the
data-parallel group and the micro-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from titan_jepa.data.special_tokens import predictor_names
from titan_jepa.data.views import JepaViews
from titan_jepa.objectives.base import Objective, Term, hidden_at, own_items


def view_embeddings(hidden: torch.Tensor, pred_idx: torch.Tensor, target_idx: torch.Tensor):
    """hidden (B, S, D); indices (M, 2) of (row, column) -> two (M, D) tensors."""
    return hidden_at(hidden, pred_idx[:, 0], pred_idx[:, 1]), hidden_at(hidden, target_idx[:, 0], target_idx[:, 1])


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


@dataclass
class JepaIndices:
    """The LLM-JEPA pair of each of the M samples that carry views (the objective's record).

    pred:   (M, 2) int64 (row, column) of the Pred(Enc(Text)) token.
    target: (M, 2) int64 (row, column) of the Enc(Code) token.
    """

    pred: torch.Tensor
    target: torch.Tensor


class Jepa(Objective):
    """``[jepa]``: lambda * d(Pred(Enc(Text)), Enc(Code)) over the samples with views."""

    name = "jepa"
    metric_names = ("cos",)
    adds_segments = True

    def __init__(self, cfg):
        """``cfg``: the [jepa] section."""
        self.cfg, self.weight = cfg, cfg.lambda_

    def special_tokens(self) -> list[str]:
        return predictor_names(self.cfg.k)

    def wrap_samples(self, encode, ctx):
        return JepaViews(encode, self.cfg, ctx.tokenizer, ctx.seq_len, ctx.seed, ctx.slot, ctx.bad)

    def collate(self, batch, rows, ctx, index):
        pred, target = [], []
        for r, row in enumerate(rows):
            for _seg, start, s in row.samples:
                if "jepa" in s.marks:
                    pred.append([r, start + s.marks["jepa"][0]])
                    target.append([r, start + s.marks["jepa"][1]])
        rec = JepaIndices(torch.tensor(pred, dtype=torch.int64).reshape(-1, 2),
                          torch.tensor(target, dtype=torch.int64).reshape(-1, 2))
        return rec, len(pred)

    def loss(self, outputs, batch, heads, gather=None, rank=0) -> Term:
        rec = batch.record(self.name)
        pred, target = view_embeddings(outputs.hidden, rec.pred, rec.target)
        mine = own_items(outputs.hidden, pred.shape[0])
        pred, target = pred[mine], target[mine]
        total = jepa_distance_sum(pred, target, self.cfg.distance, self.cfg.infonce_temperature, gather, rank)
        return Term(total, {"cos": cosine_sum(pred, target)}, {"pred": pred.detach(), "target": target.detach()})

    def diagnostics(self, kept, gather):
        """Collapse diagnostics over the step's embeddings of every data-parallel rank (exact:
        the same numbers as one process; one (M, D) all-gather per log step)."""
        if not kept:
            return {}
        pred = torch.cat([k["pred"].float() for k in kept])
        target = torch.cat([k["target"].float() for k in kept])
        if gather is not None:
            with torch.no_grad():
                pred, target = torch.cat(gather(pred.contiguous())), torch.cat(gather(target.contiguous()))
        return dict(zip(COLLAPSE_METRICS, collapse_stats(pred, target).tolist()))

    def host_metrics(self, totals):
        return {"jepa_frac": totals["jepa"] / max(totals["samples"], 1)}
