"""The training objective of one micro-batch: gamma * next-token + lambda * JEPA + lambda_stp * STP.

Every term is a sum over its items (target tokens, JEPA samples, STP spans) divided by the number of
items summed over all micro-batches of the step and all data-parallel ranks (``counts``: the
``Batch.count_vector``s summed, in data/batch.py's COUNT_FIELDS order), so a result does not
depend on the number of ranks or micro-batches. The objective owns its trainable heads (the
STP linear predictor, objectives/heads.py); the model is the backbone alone.

Collapse diagnostics (JEPA runs, log steps only): with ``keep_embeddings`` set for a step,
the objective keeps each micro-batch's detached Pred and Target embeddings, and
``collapse_metrics()`` turns them into jepa_pred_std / jepa_target_std / jepa_pred_erank /
jepa_target_erank (objectives/jepa.py ``collapse_stats``) over the step's samples of every
data-parallel rank: the embeddings are all-gathered through the ``gather`` callable (exact:
the same numbers as one process; one (M, D) gather per log step, no D x D statistics).
"""

from __future__ import annotations

from typing import Callable

import torch

from titan_jepa.config import JobConfig
from titan_jepa.data.batch import COUNT_FIELDS, Batch
from titan_jepa.objectives.heads import Heads
from titan_jepa.objectives.jepa import (COLLAPSE_METRICS, collapse_stats, cosine_sum, jepa_distance_sum,
                                        view_embeddings)
from titan_jepa.objectives.next_token import next_token_loss_sum
from titan_jepa.objectives.stp import curvature_sum, pair_vectors, tube_loss_sum

TARGETS, JEPA_SAMPLES, STP_ITEMS = (COUNT_FIELDS.index(k) for k in ("targets", "jepa_samples", "stp_items"))
# the per-step loss sums
SUMS = ("ntp", "jepa", "jepa_cos", "stp")


class Objective:
    def __init__(self, cfg: JobConfig, heads: Heads | None = None, gather: Callable | None = None,
                 rank: int = 0):
        """``heads``: the trainable modules of the objectives (objectives/heads.py), already
        parallelised like the model; ``gather``: InfoNCE's differentiable all-gather."""
        self.jepa = cfg.jepa
        self.gamma = cfg.jepa.gamma if cfg.jepa.enable else 1.0
        self.stp = cfg.stp if cfg.stp.enable else None
        self.heads = heads
        self.gather, self.rank = gather, rank
        self.keep_embeddings = False  # set for a log step: keep Pred/Target for collapse_metrics
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, model, mb: Batch, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, detached sums in SUMS order)."""
        logits, hidden = model(mb.tokens, positions=mb.positions, segment_ids=mb.segment_ids,
                               context_segment=mb.context_segment, context_len=mb.context_len,
                               return_hidden=True)
        ntp = next_token_loss_sum(logits, mb.labels)
        loss = self.gamma * ntp / counts[TARGETS].clamp(min=1)
        jepa = cos = torch.zeros((), device=ntp.device)
        if self.jepa.enable:
            pred, target = view_embeddings(hidden, mb.jepa.pred, mb.jepa.target)
            jepa = jepa_distance_sum(pred, target, self.jepa.distance, self.jepa.infonce_temperature,
                                     self.gather, self.rank)
            loss = loss + self.jepa.lambda_ * jepa / counts[JEPA_SAMPLES].clamp(min=1)
            cos = cosine_sum(pred, target)
            if self.keep_embeddings:
                self.kept.append((pred.detach(), target.detach()))
        stp = torch.zeros((), device=ntp.device)
        if self.stp is not None:
            if self.stp.mode == "curvature":
                stp = curvature_sum(hidden, mb.stp.triples)
            else:
                target, predicting = pair_vectors(hidden, mb.stp)
                predictor = self.heads.tube_predictor if self.heads is not None else None
                stp = tube_loss_sum(target, predicting, mb.stp.weight, predictor)
            loss = loss + self.stp.lambda_ * stp / counts[STP_ITEMS].clamp(min=1)
        return loss, torch.stack([ntp.detach(), jepa.detach(), cos, stp.detach()]).double()

    def collapse_metrics(self) -> dict[str, float]:
        """The collapse diagnostics of the embeddings kept since ``keep_embeddings`` was set
        (every rank of the dp group calls it at the same step: it all-gathers); clears them
        and unsets ``keep_embeddings``. {} when nothing was kept (no JEPA, or a pipeline stage
        without the objective). Host numbers: log steps only."""
        kept, self.kept, self.keep_embeddings = self.kept, [], False
        if not kept:
            return {}
        pred = torch.cat([p.float() for p, _ in kept])
        target = torch.cat([t.float() for _, t in kept])
        if self.gather is not None:
            with torch.no_grad():
                pred = torch.cat(self.gather(pred.contiguous()))
                target = torch.cat(self.gather(target.contiguous()))
        return dict(zip(COLLAPSE_METRICS, collapse_stats(pred, target).tolist()))

    def loss(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The global step loss as a tensor on the sums' device (no host sync); the same
        number as ``metrics(...)["loss"]``."""
        loss = self.gamma * (sums[0] / counts[TARGETS].clamp(min=1))
        if self.jepa.enable:
            loss = loss + self.jepa.lambda_ * sums[1] / counts[JEPA_SAMPLES].clamp(min=1)
        if self.stp is not None:
            loss = loss + self.stp.lambda_ * (sums[3] / counts[STP_ITEMS].clamp(min=1))
        return loss

    def metrics(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """Global step metrics from the global sums and counts (host numbers: log steps only)."""
        c = dict(zip(COUNT_FIELDS, counts.tolist()))
        s = dict(zip(SUMS, sums.tolist()))
        ntp = s["ntp"] / max(c["targets"], 1)
        out = {"loss": self.gamma * ntp}
        if self.jepa.enable:
            n = max(c["jepa_samples"], 1)
            out["loss"] += self.jepa.lambda_ * s["jepa"] / n
            out.update(ntp_loss=ntp, jepa_loss=s["jepa"] / n, jepa_cos=s["jepa_cos"] / n,
                       jepa_frac=c["jepa_samples"] / max(c["samples"], 1),
                       tokens_full=c["full_tokens"], tokens_view=c["view_tokens"],
                       tokens_pad=c["pad_tokens"])
        if self.stp is not None:
            stp = s["stp"] / max(c["stp_items"], 1)
            out["loss"] += self.stp.lambda_ * stp
            out.update(ntp_loss=ntp, stp_loss=stp)
        return out
