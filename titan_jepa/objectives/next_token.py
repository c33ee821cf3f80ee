"""Next-token cross entropy as a (sum, count) pair, so callers divide by a global count."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from titan_jepa.data.batch import IGNORE_INDEX


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over target tokens of -log p(label); labels are already shifted (see Batch)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
