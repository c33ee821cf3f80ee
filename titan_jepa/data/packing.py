"""Packing token sequences into rows of exactly seq_len tokens, and rows into a ``Batch``.

Row layout (both kinds): segments follow each other; each segment's positions restart at
0, segment_ids count the segments of the row from 0, labels are the next token of the
same segment (never of another), padding at a row's end is one more segment of ``pad_id``
with IGNORE_INDEX labels.

- ``DocPacker`` (pretraining text): documents are concatenated and cut at row ends. A
  document that does not fit continues at the start of the next row as a new segment whose
  positions restart at 0 (so positions never exceed seq_len and RoPE tables of seq_len
  suffice). Its last token in a row is labelled with its next token (which opens the next
  row), so no target is lost; the document's own last token (eos) has IGNORE_INDEX.
- ``SamplePacker`` (chat): whole samples, greedily in stream order; a sample that does not
  fit in the rest of a row starts the next row, and the rest is padding. A sample is never
  split (every sample has length <= seq_len, checked before packing).
- ``BestFitPacker`` (chat/pairs with ``data.pack_buffer`` > 1): best-fit-decreasing over a
  bounded look-ahead buffer; see its docstring. Far less padding than greedy (tools/bench_data.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from titan_jepa.data.batch import IGNORE_INDEX, Batch, BatchCounts
from titan_jepa.data.sample import Sample, Segment


@dataclass
class Row:
    tokens: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segment_ids: list[int] = field(default_factory=list)
    samples: list[tuple[int, int, Sample]] = field(default_factory=list)  # (segment, start, sample)
    num_segments: int = 0
    # the shared-prefix context (see Batch): filled only when a segment has one
    context_segment: list[int] | None = None
    context_len: list[int] | None = None
    content: int = -1  # tokens before the padding (set by pad_to; -1: not padded)
    # (segment id, start) of the segments from position 0 with no context: what a later
    # segment's shared prefix may be read from (add_sample's share_prefix)
    anchors: list[tuple[int, int]] = field(default_factory=list)

    def add(self, tokens: list[int], labels: list[int], pos0: int = 0,
            context_segment: int = -1, context_len: int = 0) -> int:
        """Append one segment whose positions start at ``pos0``; it may also attend to the
        tokens of ``context_segment`` with position < ``context_len``. Returns its start."""
        start = len(self.tokens)
        n = len(tokens)
        self.tokens += tokens
        self.labels += labels
        self.positions += range(pos0, pos0 + n)
        self.segment_ids += [self.num_segments] * n
        if pos0 == 0 and context_segment < 0:
            self.anchors.append((self.num_segments, start))
        self.num_segments += 1
        if context_segment >= 0 and self.context_segment is None:
            self.context_segment, self.context_len = [-1] * start, [0] * start
        if self.context_segment is not None:
            self.context_segment += [context_segment] * n
            self.context_len += [context_len] * n
        return start

    def shared_prefix(self, ids: list[int], limit: int) -> tuple[int, int]:
        """(L, segment id): the longest prefix of ``ids``, at most ``limit`` tokens, that an
        anchor segment of the row starts with, and that segment (the first on ties); (0, -1)."""
        best, best_seg = 0, -1
        for seg, start in self.anchors:
            n, end = 0, min(limit, len(self.tokens) - start)
            while n < end and self.tokens[start + n] == ids[n] and self.segment_ids[start + n] == seg:
                n += 1
            if n > best:
                best, best_seg = n, seg
        return best, best_seg

    def pad_to(self, seq_len: int, pad_id: int) -> "Row":
        n = seq_len - len(self.tokens)
        if self.content < 0:
            self.content = len(self.tokens)
        if n > 0:
            self.add([pad_id] * n, [IGNORE_INDEX] * n)
        return self


class DocPacker:
    """Token stream of documents -> rows; the unfinished document is its state."""

    def __init__(self, seq_len: int, pad_id: int, next_doc: Callable[[], list[int] | None]):
        self.seq_len, self.pad_id, self.next_doc = seq_len, pad_id, next_doc
        self.doc: list[int] = []  # the current document; self.off: its first unpacked token
        self.off = 0

    def next_row(self) -> Row | None:
        row = Row()
        while len(row.tokens) < self.seq_len:
            if self.off >= len(self.doc):
                doc = self.next_doc()
                if doc is None:
                    break
                self.doc, self.off = doc, 0
            d, o = self.doc, self.off
            n = min(self.seq_len - len(row.tokens), len(d) - o)
            labels = d[o + 1:o + n + 1]
            if o + n == len(d):
                labels.append(IGNORE_INDEX)
            row.add(d[o:o + n], labels)
            self.off = o + n
        if not row.tokens:
            return None
        return row.pad_to(self.seq_len, self.pad_id)

    def state_dict(self) -> dict:
        return {"doc": self.doc[self.off:]}

    def load_state_dict(self, sd: dict) -> None:
        self.doc, self.off = list(sd["doc"]), 0


class SamplePacker:
    """Whole samples -> rows, greedily; the sample that did not fit is its state.

    A sample (data/sample.py) is one segment (its full sequence), or its ``segments``
    placed contiguously in one row as consecutive segments (the JEPA views,
    data/views.py); a segment may start at a position other than 0 and attend to another
    segment of its sample up to a position (shared-prefix views). ``Row.samples`` records
    (first segment id, start, sample).
    """

    def __init__(self, seq_len: int, pad_id: int, next_sample: Callable[[], dict | None], share_prefix: int = 0):
        self.seq_len, self.pad_id, self.next_sample = seq_len, pad_id, next_sample
        self.share_prefix = share_prefix  # see add_sample
        self.pending: dict | None = None

    def next_row(self) -> Row | None:
        row, used = Row(), 0  # used: the samples' whole lengths (a shared prefix frees no room)
        while True:
            if self.pending is None:
                self.pending = self.next_sample()
                if self.pending is None:
                    break
            s = self.pending
            total = sample_len(s, self.seq_len)
            if used + total > self.seq_len:
                break
            add_sample(row, s, self.share_prefix)
            used += total
            self.pending = None
        if not row.tokens:
            return None
        return row.pad_to(self.seq_len, self.pad_id)

    def state_dict(self) -> dict:
        return {"pending": None if self.pending is None else self.pending.to_json()}

    def load_state_dict(self, sd: dict) -> None:
        self.pending = None if sd["pending"] is None else Sample.from_json(sd["pending"])


def sample_len(s: Sample, seq_len: int) -> int:
    """Tokens of one sample (all its segments); one longer than seq_len is an error."""
    total = len(s)
    if total > seq_len:
        raise ValueError(f"a sample of {total} tokens does not fit in seq_len {seq_len}")
    return total


def add_sample(row: Row, s: Sample, share_prefix: int = 0) -> None:
    """Append one sample's segments to ``row`` and record it, as placed, in ``row.samples``.

    ``share_prefix`` > 0: a view segment (one after the sample's full sequences, positions
    from 0, no context of its own, no other segment's context) whose first L >= share_prefix
    tokens repeat the first L tokens of an earlier segment of the row (the chat header and
    system prompt every view of a template starts with) is placed without them: its own
    tokens start at position L and attend to that earlier segment's first L tokens as their
    context. Under a causal mask those tokens' states are the same in both copies (same
    tokens, same positions), so the losses and gradients equal the untrimmed row's while the
    model runs L fewer tokens. Only unlabelled tokens before every mark of the sample are
    trimmed; the recorded sample has the trimmed segments (``pos0`` = L) and its marks moved
    to match. The row keeps the untrimmed length free (padding the model skips), so which
    samples share a row never depends on this.
    """
    first, start = row.num_segments, len(row.tokens)
    segs = s.all_segments()
    marks = sorted(m for v in s.marks.values() for m in v)
    contexts = {seg.context for seg in segs if seg.context >= 0}
    placed, cuts, offset = [], [], 0  # cuts: (offset in the sample where tokens were removed, how many)
    for i, seg in enumerate(segs):
        at, n = offset, 0
        offset += len(seg.ids)
        if seg.context >= 0:
            row.add(seg.ids, seg.labels, seg.pos0, first + seg.context, seg.context_len)
            placed.append(seg)
            continue
        if share_prefix > 0 and i >= s.full_segments and seg.pos0 == 0 and i not in contexts:
            unlabelled = next((j for j, y in enumerate(seg.labels) if y != IGNORE_INDEX), len(seg.labels))
            limit = min([len(seg.ids) - 1, unlabelled] + [m - at for m in marks if m >= at])
            n, anchor = row.shared_prefix(seg.ids, limit)
        if n >= share_prefix > 0:
            seg = Segment(seg.ids[n:], seg.labels[n:], n)
            row.add(seg.ids, seg.labels, n, anchor, n)
            cuts.append((at, n))
        else:
            row.add(seg.ids, seg.labels, seg.pos0)
        placed.append(seg)
    if cuts:
        moved = {k: [m - sum(c for o, c in cuts if o < m) for m in v] for k, v in s.marks.items()}
        s = replace(s, segments=placed, marks=moved)
    row.samples.append((first, start, s))


class BestFitPacker:
    """Whole samples -> rows, best-fit-decreasing over a look-ahead buffer of ``buffer`` samples.

    Rounds: read up to ``buffer`` samples (stream order), sort them by length (descending;
    stable, so equal lengths keep stream order) and place each into the open row with the
    least room that still fits it (the first such row on ties), opening a new row when none
    fits. After the round, the ``keep_open`` rows with the most room (ties: the later opened)
    stay open for the next round's samples; the other rows are finished and emitted in the
    order they were opened, before any row of a later round. At the end of the data the open
    rows are emitted too. Every sample is emitted exactly once, never split; the order is a
    function of the sample stream alone (deterministic for a seed).

    State (JSON-able, like SamplePacker's ``pending``): the open rows and the finished rows
    not yet emitted, each a list of samples in placement order.
    """

    def __init__(self, seq_len: int, pad_id: int, next_sample: Callable[[], dict | None],
                 buffer: int, keep_open: int = 4, share_prefix: int = 0):
        if buffer < 2:
            raise ValueError("BestFitPacker needs a buffer of at least 2 samples (1 or 0: SamplePacker)")
        self.seq_len, self.pad_id, self.next_sample = seq_len, pad_id, next_sample
        self.buffer, self.keep_open = buffer, keep_open
        self.share_prefix = share_prefix  # see add_sample
        self.open: list[list[dict]] = []   # rows still filling
        self.done: list[list[dict]] = []   # finished rows, to emit first
        self.ended = False

    def _round(self) -> None:
        samples = []
        while len(samples) < self.buffer:
            s = self.next_sample()
            if s is None:
                self.ended = True
                break
            samples.append(s)
        lengths = [sample_len(s, self.seq_len) for s in samples]
        rows = self.open
        used = [sum(sample_len(s, self.seq_len) for s in r) for r in rows]
        for i in sorted(range(len(samples)), key=lambda i: -lengths[i]):
            n, best = lengths[i], -1
            for r, u in enumerate(used):
                room = self.seq_len - u
                if room >= n and (best < 0 or room < self.seq_len - used[best]):
                    best = r
            if best < 0:
                rows.append([])
                used.append(0)
                best = len(rows) - 1
            rows[best].append(samples[i])
            used[best] += n
        keep = 0 if self.ended else self.keep_open
        # the rows with the most room stay open (on ties the later opened)
        by_room = sorted(range(len(rows)), key=lambda r: (used[r], -r))
        stay = set(by_room[:keep])
        self.done += [r for i, r in enumerate(rows) if i not in stay]
        self.open = [r for i, r in enumerate(rows) if i in stay]

    def next_row(self) -> Row | None:
        while not self.done and not self.ended:
            self._round()
        if not self.done:
            return None
        row = Row()
        for s in self.done.pop(0):
            add_sample(row, s, self.share_prefix)
        return row.pad_to(self.seq_len, self.pad_id)

    def state_dict(self) -> dict:
        return {"open": [[s.to_json() for s in r] for r in self.open],
                "done": [[s.to_json() for s in r] for r in self.done], "ended": self.ended}

    def load_state_dict(self, sd: dict) -> None:
        self.open = [[Sample.from_json(s) for s in r] for r in sd["open"]]
        self.done = [[Sample.from_json(s) for s in r] for r in sd["done"]]
        self.ended = bool(sd["ended"])


def row_pairs(row: Row) -> int:
    """(query, key) pairs the row's mask lets through: block-causal per segment, plus the
    shared-prefix context (flops.visible_pairs computes the same from a Batch)."""
    pairs = 0
    for _, run in itertools.groupby(row.segment_ids):
        n = sum(1 for _ in run)
        pairs += n * (n + 1) // 2
    if row.context_segment is not None:
        pairs += sum(n for c, n in zip(row.context_segment, row.context_len) if c >= 0)
    return pairs


def collate(rows: list[Row], batch_size: int, seq_len: int, pad_id: int) -> Batch:
    """Stack rows (adding all-padding rows up to batch_size) into CPU tensors, with the
    BatchCounts of text data (every token a full-sequence token; the loader refines the
    token kinds of chat/pairs batches and adds the objectives' records and items)."""
    rows = rows + [Row().pad_to(seq_len, pad_id) for _ in range(batch_size - len(rows))]
    tokens = batch_size * seq_len
    pairs = sum(row_pairs(r) for r in rows)
    batch = Batch(
        tokens=torch.tensor([r.tokens for r in rows], dtype=torch.int64),
        labels=torch.tensor([r.labels for r in rows], dtype=torch.int64),
        positions=torch.tensor([r.positions for r in rows], dtype=torch.int64),
        segment_ids=torch.tensor([r.segment_ids for r in rows], dtype=torch.int32),
        counts=BatchCounts(full_tokens=tokens, tokens=tokens, pairs=pairs, ntp_tokens=tokens, ntp_pairs=pairs),
    )
    batch.targets_at = (batch.labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)
    batch.tokens_at = torch.tensor([b * seq_len + i for b, r in enumerate(rows)
                                    for i in range(r.content if r.content >= 0 else len(r.tokens))], dtype=torch.int64)
    if any(r.context_segment is not None for r in rows):
        batch.context_segment = torch.tensor(
            [r.context_segment or [-1] * seq_len for r in rows], dtype=torch.int32)
        batch.context_len = torch.tensor([r.context_len or [0] * seq_len for r in rows], dtype=torch.int32)
    return batch
