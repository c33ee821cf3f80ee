"""Semantic Tube Prediction spans, sampled in the data pipeline.

A *virtual sequence* is a list of parts; each part is an anchor token and the tokens that
follow it. For pretraining text it is one document piece (a segment of a packed row: the
anchor is its first token), so spans never cross documents. For a chat sample it is the
user content then the assistant content (anchors: the token before each, so the template
tokens between them are skipped).

Its N steps are the moves from one token to the next (from the anchor to the first token,
then token to token). A span [s, t) (0 <= s < t <= N) covers steps s+1..t; its displacement
is h[t-1] - h[s-1] within a part (a span crossing the user/assistant boundary is split into
its per-part displacements). The rest of the sequence is the steps before s and after t.

The losses (objectives/stp.py) only see the index tensors of the batch's STP record, an
``StpSpans`` (below): flat token indices (row * S + column), signs and output slots of the two
vectors of each pair, the pair weights (span-length weighting, else 1), and for curvature
the triples of successive tokens.

Which spans are drawn depends only on (seed, slot, batch index), so resumed and re-laid
out runs draw the same spans.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.sample import Sample, Segment

Part = tuple[int, list[int]]  # (anchor position, positions of the tokens that follow)


@dataclass
class StpSpans:
    """STP pairs as flat index tensors (flat index = row * S + column): the STP objective's
    record of a batch.

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

    @property
    def items(self) -> int:
        """The loss items: token triples for curvature, else pairs."""
        return self.triples.shape[0] if self.triples.numel() else self.weight.shape[0]


def range_terms(parts: list[Part], lo: int, hi: int) -> list[tuple[int, float]]:
    """(position, sign) terms of the displacement over steps lo+1..hi of the virtual sequence."""
    terms, offset = [], 0
    for anchor, points in parts:
        a, b = max(lo, offset), min(hi, offset + len(points))
        if a < b:  # steps a+1..b fall in this part: h[point b] - h[point a] (point 0 = anchor)
            start = anchor if a == offset else points[a - offset - 1]
            terms += [(points[b - offset - 1], 1.0), (start, -1.0)]
        offset += len(points)
    return terms


def sample_span(rng: random.Random, n: int, sampling: str, max_len: int) -> tuple[int, int] | None:
    """A span [s, t) of a sequence of n steps that is not the whole sequence."""
    limit = n - 1 if max_len < 0 else min(max_len, n - 1)
    if limit < 1:
        return None
    if sampling == "length":
        length = rng.randint(1, limit)
        s = rng.randint(0, n - length)
        return s, s + length
    for _ in range(100):  # the reference's draw, rejecting the whole sequence (and too long)
        s = rng.randint(0, n - 1)
        t = rng.randint(s + 1, n)
        if t - s <= limit:
            return s, t
    return None


def span_weight(r: int, p: int, weighting: str) -> float:
    if weighting == "cosine_like":
        return 2 * r * p / (r * r + p * p)
    if weighting == "jaccard_like":
        return 1 - abs(r - p) / (r + p)
    return 1.0


def text_sequences(batch, min_len: int) -> list[list[Part]]:
    """One virtual sequence per document piece (segment) that has targets."""
    seqs = []
    seq_len = batch.tokens.shape[1]
    for r, (seg, labels) in enumerate(zip(batch.segment_ids, batch.labels)):
        _, lengths = torch.unique_consecutive(seg, return_counts=True)
        start = 0
        for n in lengths.tolist():
            if n >= min_len and bool((labels[start:start + n] != IGNORE_INDEX).any()):
                base = r * seq_len + start
                seqs.append([(base, list(range(base + 1, base + n)))])
            start += n
    return seqs


def chat_sequences(batch) -> list[list[Part]]:
    """One virtual sequence per chat sample: the user content, then the assistant content."""
    seq_len = batch.tokens.shape[1]
    seqs = []
    for row, _seg, _start, _len, us, ue, as_, ae in batch.samples.table.tolist():
        base = row * seq_len
        seqs.append([(base + us - 1, list(range(base + us, base + ue))),
                     (base + as_ - 1, list(range(base + as_, base + ae)))])
    return seqs


def stp_spans(batch, stp_cfg, seed: int, slot: int, batch_index: int) -> StpSpans:
    """The STP index tensors of one collated batch (see the module docstring)."""
    seqs = text_sequences(batch, stp_cfg.min_doc_len) if batch.samples is None else chat_sequences(batch)
    rng = random.Random(f"stp:{seed}:{slot}:{batch_index}")
    index, coef, slots, weight, triples = [], [], [], [], []

    def add_pair(target, predicting, w):
        pair = len(weight)
        for which, terms in ((0, target), (1, predicting)):
            for pos, c in terms:
                index.append(pos), coef.append(c), slots.append(2 * pair + which)
        weight.append(w)

    for parts in seqs:
        n = sum(len(p) for _, p in parts)
        if stp_cfg.mode == "random_span":
            for _ in range(stp_cfg.spans_per_sample):
                span = sample_span(rng, n, stp_cfg.sampling, stp_cfg.max_span_len)
                if span is None:
                    continue
                s, t = span
                rest = range_terms(parts, 0, s) + range_terms(parts, t, n)
                add_pair(range_terms(parts, s, t), rest, span_weight(t - s, n - (t - s), stp_cfg.weighting))
        elif stp_cfg.mode == "e2e":
            (ua, up), (aa, ap) = parts
            if up and ap:
                add_pair(range_terms(parts, len(up), n), range_terms(parts, 0, len(up)), 1.0)
        elif stp_cfg.mode == "curvature":
            for anchor, points in parts:
                chain = [anchor] + points
                triples += [chain[i - 2:i + 1] for i in range(2, len(chain))]
    return StpSpans(index=torch.tensor(index, dtype=torch.int64), coef=torch.tensor(coef, dtype=torch.float32),
                    slot=torch.tensor(slots, dtype=torch.int64), weight=torch.tensor(weight, dtype=torch.float32),
                    triples=torch.tensor(triples, dtype=torch.int64).reshape(-1, 3))


class MaskViews:
    """``stp.mode = "random_span_mask"`` (the mask ablation, chat data): two extra segments
    per sample, packed in the same row: the full sequence with one random span of its
    user+assistant content replaced by a single <|mask|> token, and the span alone. Pred is
    the masked view's last content token, before its final end-of-turn token (<|eot_id|>,
    ChatML's <|im_end|>); the target is the span view's
    last token. The pair is recorded in ``sample.marks["stp"]`` as offsets in the sample."""

    def __init__(self, samples, stp_cfg, tokenizer, seq_len: int, seed: int, slot: int, bad):
        self.samples, self.cfg, self.tok = samples, stp_cfg, tokenizer
        self.seq_len, self.seed, self.slot, self.bad = seq_len, seed, slot, bad
        self.counter = 0

    def state_dict(self) -> dict:
        return {"counter": self.counter}

    def load_state_dict(self, sd: dict) -> None:
        self.counter = sd["counter"]

    def __call__(self, obj, where: str) -> Sample | None:
        sample = self.samples(obj, where)
        if sample is None:
            return None
        self.counter += 1
        rng = random.Random(f"stp-mask:{self.seed}:{self.slot}:{self.counter}")
        (us, ue), (as_, ae) = sample.user, sample.assistant
        content = list(range(us, ue)) + list(range(as_, ae))
        span = sample_span(rng, len(content), self.cfg.sampling, self.cfg.max_span_len)
        if span is None:
            return sample
        s, t = span
        ids = sample.ids
        cut = content[s:t]
        span_ids = [ids[i] for i in cut]
        dropped = set(cut[1:])
        masked = [tok for i, tok in enumerate(ids) if i not in dropped]
        masked[cut[0]] = self.tok.mask_id
        full, labels = sample.ids, sample.labels
        ignore = [IGNORE_INDEX]
        segments = [Segment(full, labels), Segment(masked, ignore * len(masked)),
                    Segment(span_ids, ignore * len(span_ids))]
        if sum(len(x.ids) for x in segments) > self.seq_len:
            self.bad.report(where, f"sample with its STP mask views longer than training.seq_len ({self.seq_len})")
            return None
        sample.segments = segments
        # Pred: the masked view's last content token (the one before its end-of-turn token,
        # whatever follows that: ChatML's "<|im_end|>\n" too), where the original ae - 1 went
        last = ae - 1 - sum(1 for i in dropped if i <= ae - 1)
        sample.marks["stp"] = [len(full) + last, len(full) + len(masked) + len(span_ids) - 1]
        return sample


def mask_view_spans(rows, seq_len: int) -> StpSpans:
    """The random_span_mask pairs of packed rows as STP index tensors (one term per side)."""
    index, slots = [], []
    for r, row in enumerate(rows):
        for _seg, start, s in row.samples:
            if "stp" in s.marks:
                pred_at, target_at = s.marks["stp"]
                pair = len(index) // 2
                index += [r * seq_len + start + target_at, r * seq_len + start + pred_at]
                slots += [2 * pair, 2 * pair + 1]
    return StpSpans(index=torch.tensor(index, dtype=torch.int64), coef=torch.ones(len(index), dtype=torch.float32),
                    slot=torch.tensor(slots, dtype=torch.int64), weight=torch.ones(len(index) // 2, dtype=torch.float32),
                    triples=torch.zeros(0, 3, dtype=torch.int64))
