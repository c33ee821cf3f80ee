"""The contract between the data pipeline and the losses: ``Batch`` and its records.

A micro-batch is made on the CPU by ``collate`` (data/packing.py) and the loader
(data/loader.py), which fill every field below; the step moves it with ``Batch.to(device)``
in one host-to-device copy and reads it without host syncs:

- ``Batch``: the token tensors (tokens, labels, positions, segment ids, shared-prefix
  context), ``mask_inputs()`` being what the model's forward takes besides the tokens.
- ``BatchCounts``: the per-batch counts, plain Python ints computed on the CPU (token kinds,
  the FLOP counts of flops.py, and each objective's number of loss items). The step sums
  their float64 vector (``Batch.count_vector``) over micro-batches and data-parallel ranks
  before the forward.
- ``records``: each objective's own record (a dataclass of tensors, e.g. LLM-JEPA's
  embedding indices, STP's spans), under the objective's name, made by its ``collate``.
- ``SampleTable``: per-sample spans of chat/pairs batches and their Text/Code view ids;
  host-side metadata for the objectives' collate and for tests, never moved to the device.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, field, fields, replace
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BatchCounts:
    """Counts of one micro-batch (Python ints, computed on the CPU when it is made).

    samples:      chat/pairs samples in the batch (0 for text).
    full_tokens:  tokens of the full sequences (text: every token).
    view_tokens:  tokens of the extra view segments (JEPA views, STP mask views).
    pad_tokens:   padding tokens, all-padding rows included.
    tokens:       every token the model runs on (B * S), for the FLOP count.
    pairs:        (query, key) pairs the attention mask lets through (flops.py).
    ntp_tokens, ntp_pairs: the same for the full sequences alone: what a next-token-only
                  run over the same samples would spend (flops.py's next-token equivalent).
    items:        each objective's number of loss items (its name -> count: "ntp" the
                  target tokens, "jepa" the samples with views, "stp" the span pairs ...),
                  in the objectives' order.
    """

    samples: int = 0
    full_tokens: int = 0
    view_tokens: int = 0
    pad_tokens: int = 0
    tokens: int = 0
    pairs: int = 0
    ntp_tokens: int = 0
    ntp_pairs: int = 0
    items: dict[str, int] = field(default_factory=dict)

    def vector(self) -> torch.Tensor:
        """The counts (COUNT_FIELDS, then the items in order) as a float64 CPU tensor
        (exact: integers < 2**53)."""
        return torch.tensor([*astuple(self)[:len(COUNT_FIELDS)], *self.items.values()], dtype=torch.float64)


COUNT_FIELDS = tuple(f.name for f in fields(BatchCounts) if f.name != "items")


SAMPLE_COLUMNS = ("row", "segment", "start", "length", "user_start", "user_end",
                  "assistant_start", "assistant_end")


@dataclass
class SampleTable:
    """The samples of a chat/pairs batch (host-side; ``Batch.to`` leaves it on the CPU).

    table:    (N, 8) int64, one row per sample, columns SAMPLE_COLUMNS: row, segment (its
              segment id in the row), start (offset in the row), length, user_start,
              user_end, assistant_start, assistant_end (content spans, end exclusive, as
              offsets in the row: tokens[row, user_start:user_end] is the user content).
    text_ids, code_ids: N lists of token ids of the Text and Code views.
    """

    table: torch.Tensor
    text_ids: list[list[int]]
    code_ids: list[list[int]]


MASK_FIELDS = ("positions", "segment_ids", "context_segment", "context_len")


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
    counts:      BatchCounts (host ints); None only for hand-made batches.
    records:     each objective's record (a dataclass of tensors), by objective name.
    samples:     SampleTable (chat/pairs data), else None.
    count_vector: ``counts.vector()`` on the batch's device, set by ``to``.
    targets_at:  (N,) int64 flat indices (row * S + position) of the tokens with a label,
                 in row-major order (``collate`` fills it); the model's head may run on
                 these alone (``Transformer.forward(logits_at=...)``).
    tokens_at:   (T,) int64 flat indices of the tokens that are not padding, in row-major
                 order (``collate`` fills it); the model may run on these alone
                 (``Transformer.forward(tokens_at=...)``).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    context_segment: torch.Tensor | None = None
    context_len: torch.Tensor | None = None
    counts: BatchCounts | None = None
    records: dict[str, Any] = field(default_factory=dict)
    samples: SampleTable | None = None
    count_vector: torch.Tensor | None = None
    targets_at: torch.Tensor | None = None
    tokens_at: torch.Tensor | None = None

    def mask_inputs(self) -> dict[str, torch.Tensor]:
        """The mask metadata the model's forward takes beside the tokens (None ones left out)."""
        return {f: getattr(self, f) for f in MASK_FIELDS if getattr(self, f) is not None}

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor (but ``samples``) on ``device``, in one copy: the
        tensors are packed into one byte buffer (pinned on CUDA, copied non-blocking) and
        unpacked as views of it on the device."""
        device = torch.device(device)
        tensors = {}  # (record name or None, field) -> tensor
        for f in ("tokens", "labels", "targets_at", "tokens_at", *MASK_FIELDS):
            if getattr(self, f) is not None:
                tensors[(None, f)] = getattr(self, f)
        for name, rec in self.records.items():
            for f in fields(rec):
                value = getattr(rec, f.name)
                if isinstance(value, torch.Tensor):
                    tensors[(name, f.name)] = value
        if self.counts is not None:
            tensors[(None, "count_vector")] = self.counts.vector()
        moved = dict(zip(tensors, move_packed(list(tensors.values()), device)))
        top = {f: t for (rec, f), t in moved.items() if rec is None}
        records = {name: replace(rec, **{f: t for (k, f), t in moved.items() if k == name})
                   for name, rec in self.records.items()}
        return replace(self, records=records, **top)

    def record(self, name: str):
        """The record of objective ``name`` (None when this batch has none)."""
        return self.records.get(name)


_ALIGN = 8  # bytes: every tensor starts at a multiple of the largest element size


def move_packed(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``tensors`` on ``device`` through one byte buffer and one copy (same values, dtypes
    and shapes; contiguous views of the buffer)."""
    chunks, spans, offset = [], [], 0
    for t in tensors:
        raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
        pad = -raw.numel() % _ALIGN
        chunks.append(raw)
        if pad:
            chunks.append(torch.zeros(pad, dtype=torch.uint8))
        spans.append((offset, raw.numel()))
        offset += raw.numel() + pad
    buf = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.uint8)
    if device.type == "cuda":
        buf = buf.pin_memory()
    buf = buf.to(device, non_blocking=True)
    return [buf[o:o + n].view(t.dtype).view(t.shape) for t, (o, n) in zip(tensors, spans)]
