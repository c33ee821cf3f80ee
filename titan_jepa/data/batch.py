"""The one type that carries a micro-batch from the data pipeline to the losses."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

IGNORE_INDEX = -100


@dataclass
class Batch:
    """One micro-batch of packed rows.

    tokens:      (B, S) int64 input ids.
    labels:      (B, S) int64 next-token targets, already shifted: labels[b, i] is the
                 token that should follow tokens[b, i]; IGNORE_INDEX where no loss is taken
                 (segment ends, padding, prompt tokens when the loss is on answers only).
    positions:   (B, S) int64 RoPE positions; they restart at 0 in each segment.
                 None: 0..S-1 in every row.
    segment_ids: (B, S) int32; a token attends to the earlier tokens of its own segment
                 (block-causal). Padding gets a segment of its own. None: plain causal.
    context_segment, context_len: (B, S) int32, optional. A token whose context_segment
                 is c >= 0 may also attend to the tokens of segment c whose position is
                 < context_len (the shared-prefix JEPA view). -1: no extra context.
    extras:      objective-specific index tensors (JEPA view indices, STP spans, ...).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    context_segment: torch.Tensor | None = None
    context_len: torch.Tensor | None = None
    extras: dict | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def num_targets(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())
