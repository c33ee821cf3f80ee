"""The training objective of one micro-batch: gamma * next-token + lambda * JEPA + lambda_stp * STP.

Every term is a sum over its items (target tokens, JEPA samples, STP spans) divided by the number of
items summed over all micro-batches of the step and all data-parallel ranks (``counts``),
so a result does not depend on the number of ranks or micro-batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from titan_jepa.config import JobConfig
from titan_jepa.data.batch import Batch
from titan_jepa.objectives.jepa import cosine_sum, jepa_distance_sum, view_embeddings
from titan_jepa.objectives.next_token import next_token_loss_sum
from titan_jepa.objectives.stp import PREDICTOR, curvature_sum, pair_vectors, tube_loss_sum

# the per-step counts, summed over micro-batches and then over the data-parallel group
COUNTS = ("targets", "jepa_samples", "samples", "full_tokens", "view_tokens", "pad_tokens", "stp_items")
TARGETS, JEPA_SAMPLES, STP_ITEMS = (COUNTS.index(k) for k in ("targets", "jepa_samples", "stp_items"))
# the per-step loss sums
SUMS = ("ntp", "jepa", "jepa_cos", "stp")


class Objective:
    def __init__(self, cfg: JobConfig, gather: Callable | None = None, rank: int = 0):
        self.jepa = cfg.jepa
        self.gamma = cfg.jepa.gamma if cfg.jepa.enable else 1.0
        self.stp = cfg.stp if cfg.stp.enable else None
        self.gather, self.rank = gather, rank

    def counts(self, mb: Batch) -> torch.Tensor:
        """This micro-batch's counts, in COUNTS order (float64, on the batch's device)."""
        ex = mb.extras or {}
        jepa = ex["jepa_pred"].shape[0] if "jepa_pred" in ex else 0
        samples = ex["samples"].shape[0] if "samples" in ex else 0
        kinds = ex.get("token_kinds")
        kinds = [mb.tokens.numel(), 0, 0] if kinds is None else kinds.tolist()
        stp = 0
        if self.stp is not None:  # spans, or token triples for curvature
            stp = ex["stp_triples"].shape[0] if self.stp.mode == "curvature" else ex["stp_weight"].shape[0]
        return torch.tensor([mb.num_targets, jepa, samples, *kinds, stp], dtype=torch.float64,
                            device=mb.tokens.device)

    def __call__(self, model, mb: Batch, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, detached sums in SUMS order)."""
        logits, hidden = model(mb.tokens, positions=mb.positions, segment_ids=mb.segment_ids,
                               context_segment=mb.context_segment, context_len=mb.context_len,
                               return_hidden=True)
        ntp = next_token_loss_sum(logits, mb.labels)
        loss = self.gamma * ntp / counts[TARGETS].clamp(min=1)
        jepa = cos = torch.zeros((), device=ntp.device)
        if self.jepa.enable:
            pred, target = view_embeddings(hidden, mb.extras["jepa_pred"], mb.extras["jepa_target"])
            jepa = jepa_distance_sum(pred, target, self.jepa.distance, self.jepa.infonce_temperature,
                                     self.gather, self.rank)
            loss = loss + self.jepa.lambda_ * jepa / counts[JEPA_SAMPLES].clamp(min=1)
            cos = cosine_sum(pred, target)
        stp = torch.zeros((), device=ntp.device)
        if self.stp is not None:
            if self.stp.mode == "curvature":
                stp = curvature_sum(hidden, mb.extras["stp_triples"])
            else:
                target, predicting = pair_vectors(hidden, mb.extras)
                stp = tube_loss_sum(target, predicting, mb.extras["stp_weight"],
                                    getattr(model, PREDICTOR, None))
            loss = loss + self.stp.lambda_ * stp / counts[STP_ITEMS].clamp(min=1)
        return loss, torch.stack([ntp.detach(), jepa.detach(), cos, stp.detach()]).double()

    def metrics(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """Global step metrics from the global sums and counts."""
        c = dict(zip(COUNTS, counts.tolist()))
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
