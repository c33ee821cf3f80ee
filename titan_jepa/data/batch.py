"""The contract between the data pipeline and the losses: ``Batch`` and its typed records.

A micro-batch is made on the CPU by ``collate`` (data/packing.py) and the loader
(data/loader.py), which fill every field below; the step moves it with ``Batch.to(device)``
in one host-to-device copy and reads it without host syncs:

- ``Batch``: the token tensors (tokens, labels, positions, segment ids, shared-prefix context).
- ``BatchCounts``: the per-batch counts, plain Python ints computed on the CPU (loss
  denominators, token kinds, the FLOP counts of flops.py). The step sums their float64 vector
  (``Batch.count_vector``) over micro-batches and data-parallel ranks before the forward.
- ``JepaIndices``: where the LLM-JEPA loss reads its two embeddings (chat/pairs data).
- ``StpSpans``: the Semantic Tube Prediction spans as flat index tensors (data/spans.py).
- ``SampleTable``: per-sample spans of chat/pairs batches and their Text/Code view ids;
  host-side metadata for the pipeline and tests, never moved to the device.

Who fills what: text batches have ``counts`` only; chat/pairs batches also ``samples`` and
``jepa`` (empty when no sample carries JEPA views); ``stp`` is set when ``[stp]`` is enabled.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields, replace

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class BatchCounts:
    """Counts of one micro-batch (Python ints, computed on the CPU when it is made).

    targets:      tokens with a next-token target (labels != IGNORE_INDEX).
    jepa_samples: samples with a JEPA pair (rows of ``JepaIndices``).
    samples:      chat/pairs samples in the batch (0 for text).
    full_tokens:  tokens of the full sequences (text: every token).
    view_tokens:  tokens of the extra view segments (JEPA views, STP mask views).
    pad_tokens:   padding tokens, all-padding rows included.
    stp_items:    STP loss items: span pairs, or token triples for ``stp.mode = "curvature"``.
    tokens:       every token the model runs on (B * S), for the FLOP count.
    pairs:        (query, key) pairs the attention mask lets through (flops.py).
    ntp_tokens, ntp_pairs: the same for the full sequences alone: what a next-token-only
                  run over the same samples would spend (flops.py's next-token equivalent).
    """

    targets: int = 0
    jepa_samples: int = 0
    samples: int = 0
    full_tokens: int = 0
    view_tokens: int = 0
    pad_tokens: int = 0
    stp_items: int = 0
    tokens: int = 0
    pairs: int = 0
    ntp_tokens: int = 0
    ntp_pairs: int = 0

    def vector(self) -> torch.Tensor:
        """The counts in field order as a float64 CPU tensor (exact: integers < 2**53)."""
        return torch.tensor(astuple(self), dtype=torch.float64)


COUNT_FIELDS = tuple(f.name for f in fields(BatchCounts))


@dataclass
class JepaIndices:
    """The LLM-JEPA pair of each of the M samples that carry views (data/views.py).

    pred:   (M, 2) int64 (row, column) of the Pred(Enc(Text)) token.
    target: (M, 2) int64 (row, column) of the Enc(Code) token.
    """

    pred: torch.Tensor
    target: torch.Tensor


@dataclass
class StpSpans:
    """STP pairs as flat index tensors (flat index = row * S + column; data/spans.py).

    index, coef, slot: (T,) int64 token index, float32 sign (+1 / -1) and int64 output
           vector (2 * pair for the target side, 2 * pair + 1 for the predicting side);
           vector[slot] = sum of coef * h[index].
    weight:  (P,) float32 weight of each of the P pairs.
    triples: (C, 3) int64 flat indices of successive tokens (``stp.mode = "curvature"``;
           empty otherwise, and then the pair tensors are empty).
    """

    index: torch.Tensor
    coef: torch.Tensor
    slot: torch.Tensor
    weight: torch.Tensor
    triples: torch.Tensor


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
    jepa:        JepaIndices (chat/pairs data), else None.
    stp:         StpSpans ([stp] enabled), else None.
    samples:     SampleTable (chat/pairs data), else None.
    count_vector: ``counts.vector()`` on the batch's device, set by ``to``.
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor | None = None
    segment_ids: torch.Tensor | None = None
    context_segment: torch.Tensor | None = None
    context_len: torch.Tensor | None = None
    counts: BatchCounts | None = None
    jepa: JepaIndices | None = None
    stp: StpSpans | None = None
    samples: SampleTable | None = None
    count_vector: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """The batch with every tensor (but ``samples``) on ``device``, in one copy: the
        tensors are packed into one byte buffer (pinned on CUDA, copied non-blocking) and
        unpacked as views of it on the device."""
        device = torch.device(device)
        tensors = {}  # (record, field) -> tensor
        for f in ("tokens", "labels", "positions", "segment_ids", "context_segment", "context_len"):
            if getattr(self, f) is not None:
                tensors[(None, f)] = getattr(self, f)
        for rec in ("jepa", "stp"):
            r = getattr(self, rec)
            if r is not None:
                for f in fields(r):
                    tensors[(rec, f.name)] = getattr(r, f.name)
        if self.counts is not None:
            tensors[(None, "count_vector")] = self.counts.vector()
        moved = dict(zip(tensors, move_packed(list(tensors.values()), device)))
        top = {f: t for (rec, f), t in moved.items() if rec is None}
        for rec in ("jepa", "stp"):
            r = getattr(self, rec)
            if r is not None:
                top[rec] = replace(r, **{f: t for (k, f), t in moved.items() if k == rec})
        return replace(self, **top)

    @property
    def num_targets(self) -> int:
        return self.counts.targets if self.counts is not None else int((self.labels != IGNORE_INDEX).sum())


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
