"""Next-token cross entropy: a sum over the target tokens (labels already shifted), divided
by the step's global number of targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.objectives.base import Objective, Term


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of -log p(label); labels are already shifted (see Batch).
    logits (B, S, V) with labels (B, S), or (N, V) with their N labels."""
    if logits.dim() == 3:
        logits, labels = logits.flatten(0, 1), labels.flatten(0, 1)
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")


class NextToken(Objective):
    """gamma * next-token loss; its items are the target tokens (collate counts them)."""

    name = "ntp"

    def __init__(self, gamma: float = 1.0):
        self.weight = gamma

    def collate(self, batch, rows, ctx, index):
        return None, sum(1 for r in rows for t in r.labels if t != IGNORE_INDEX)

    def loss(self, outputs, batch, heads, gather=None, rank=0) -> Term:
        labels = batch.labels
        if outputs.logits.dim() == 2:  # the head ran on batch.targets_at alone (LocalRunner)
            labels = labels.flatten()[batch.targets_at]
        return Term(next_token_loss_sum(outputs.logits, labels))
