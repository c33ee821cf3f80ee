"""Attention backends behind one small interface.

A backend turns the batch's mask metadata into a mask object once per forward
(``build_mask``), and every layer then calls ``attend(q, k, v, mask)``.

The mask rule, shared by both backends (q and k are token indices in one row):

    visible(q, k) = (seg[q] == seg[k] and k <= q)                        # block-causal
                 or (ctx_seg[q] == seg[k] and pos[k] < ctx_len[q])        # extra context

With no segment ids it is plain causal attention. ``sdpa`` materialises the rule as a
dense boolean mask (any device); ``flex`` builds a FlexAttention BlockMask from the same
rule, so fully masked blocks are skipped (the CUDA fast path; on CPU the forward runs
under torch.compile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MaskMeta:
    """Per-token mask metadata, each (B, S); None fields mean 'not used'."""

    segment_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    context_segment: torch.Tensor | None = None
    context_len: torch.Tensor | None = None

    @property
    def is_causal_only(self) -> bool:
        return self.segment_ids is None


def pairs_allowed(meta: MaskMeta, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """The rule above for the queries at row indices ``q_idx`` (Sq,) and the keys at
    ``k_idx`` (Sk,), as a (B, Sq, Sk) boolean (True = may attend); (1, Sq, Sk) when causal
    only. Context parallelism evaluates it on the global indices of a rank's queries and
    of the gathered keys."""
    causal = q_idx[:, None] >= k_idx[None, :]
    seg = meta.segment_ids
    if seg is None:
        return causal[None]
    sk = seg[:, k_idx]
    allowed = (seg[:, q_idx][:, :, None] == sk[:, None, :]) & causal
    if meta.context_segment is not None:
        ctx = (meta.context_segment[:, q_idx][:, :, None] == sk[:, None, :]) & (
            meta.positions[:, k_idx][:, None, :] < meta.context_len[:, q_idx][:, :, None]
        )
        allowed = allowed | ctx
    return allowed


def dense_mask(meta: MaskMeta, seq_len: int, device: torch.device) -> torch.Tensor:
    """The rule above as a (B, 1, S, S) boolean mask (True = may attend)."""
    idx = torch.arange(seq_len, device=device)
    return pairs_allowed(meta, idx, idx)[:, None]


@dataclass
class Run:
    """Queries ``q0:q1`` of row ``row`` and the keys they may see: ``keys`` (a slice when they
    are contiguous, else an index tensor), with ``mask`` over (queries, keys), or None when
    the keys are exactly the queries and the rule is plain causal."""

    row: int
    q0: int
    q1: int
    keys: slice | torch.Tensor
    mask: torch.Tensor | None


@dataclass
class BlockedMask:
    """The rule as per-segment blocks beside the dense mask (used under torch.compile).

    ``runs`` (in row order, covering every query once) are the blocks. The plain causal
    ones (a segment by itself: documents, separate views) are batched by length: each of
    ``buckets`` is an (n, L) tensor of flat token indices (row * S + position), one
    segment per line, right-padded with its first index, so one causal SDPA call serves
    the whole bucket (a padded slot comes after every real query of its line, which causal
    attention never lets them see). The rest (runs with a context segment: shared-prefix
    predictor tokens) are batched the same way by query and key length into ``masked``:
    (query lines (n, Lq), key lines (n, Lk), mask (n, 1, Lq, Lk)), padded keys masked out, a
    padded query row seeing its first key only (its output is never read). ``take`` maps
    every flat token index to its row in the concatenation of the buckets' outputs (n * L
    lines each), then the masked buckets' (n * Lq each)."""

    runs: list[Run]
    dense: torch.Tensor
    buckets: list[torch.Tensor]
    masked: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    take: torch.Tensor


def _bucket(length: int) -> int:
    """Half-octave length classes: a bucket's lines are padded to at most sqrt(2)x their
    length (at most 2x the attention pairs)."""
    return math.ceil(2 * math.log2(length)) if length > 1 else 0


def blocked_mask(meta: MaskMeta, seq_len: int, device: torch.device) -> BlockedMask:
    """Split each row into runs of queries with the same segment and context (contiguous),
    each with the keys the rule can allow it (its own segment, its context segment) and the
    rule on those alone; batch the plain causal ones by length. One host read of the
    metadata per forward, reused by every layer."""
    dense = dense_mask(meta, seq_len, device)
    seg = meta.segment_ids.tolist()
    ctx = meta.context_segment.tolist() if meta.context_segment is not None else None
    ctx_len = meta.context_len.tolist() if meta.context_len is not None else None
    pos = meta.positions.tolist() if ctx is not None else None
    runs = []
    for b, row in enumerate(seg):
        key = [(row[i], ctx[b][i] if ctx else None, ctx_len[b][i] if ctx else None) for i in range(seq_len)]
        start = 0
        for i in range(1, seq_len + 1):
            if i < seq_len and key[i] == key[start]:
                continue
            own, c, c_len = key[start]
            # keys: the run's own segment up to its last query, and its context segment's
            # tokens at positions below the context length
            keys = [j for j in range(i) if row[j] == own
                    or (c is not None and c >= 0 and row[j] == c and pos[b][j] < c_len)]
            if keys == list(range(start, i)):  # a whole segment by itself: plain causal
                runs.append(Run(b, start, i, slice(start, i), None))
            else:
                idx = torch.tensor(keys, device=device)
                contiguous = keys == list(range(keys[0], keys[-1] + 1))
                runs.append(Run(b, start, i, slice(keys[0], keys[-1] + 1) if contiguous else idx,
                                dense[b, 0, start:i][:, idx]))
            start = i
    by_len: dict[int, list[Run]] = {}
    for r in runs:
        if r.mask is None:
            by_len.setdefault(_bucket(r.q1 - r.q0), []).append(r)
    buckets, take, line0 = [], [0] * (len(seg) * seq_len), 0
    for group in by_len.values():
        width = max(r.q1 - r.q0 for r in group)
        lines = []
        for n, r in enumerate(group):
            first = r.row * seq_len + r.q0
            lines.append([first + j for j in range(r.q1 - r.q0)] + [first] * (width - (r.q1 - r.q0)))
            for j in range(r.q1 - r.q0):
                take[first + j] = line0 + n * width + j
        buckets.append(torch.tensor(lines, device=device))
        line0 += len(group) * width
    by_shape: dict[tuple[int, int], list[tuple[Run, list[int]]]] = {}
    for r in runs:
        if r.mask is not None:
            keys = list(range(seq_len))[r.keys] if isinstance(r.keys, slice) else r.keys.tolist()
            by_shape.setdefault((_bucket(r.q1 - r.q0), _bucket(len(keys))), []).append((r, keys))
    masked = []
    for group in by_shape.values():
        qw, kw = max(r.q1 - r.q0 for r, _ in group), max(len(k) for _, k in group)
        q_lines, k_lines = [], []
        mask = torch.zeros(len(group), 1, qw, kw, dtype=torch.bool, device=device)
        mask[:, :, :, 0] = True  # padded query rows see their first key (never read)
        for n, (r, keys) in enumerate(group):
            lq, first = r.q1 - r.q0, r.row * seq_len
            q_lines.append([first + r.q0 + j for j in range(lq)] + [first + r.q0] * (qw - lq))
            k_lines.append([first + k for k in keys] + [first + keys[0]] * (kw - len(keys)))
            mask[n, 0, :lq] = False
            mask[n, 0, :lq, :len(keys)] = r.mask
            for j in range(lq):
                take[first + r.q0 + j] = line0 + n * qw + j
        masked.append((torch.tensor(q_lines, device=device), torch.tensor(k_lines, device=device), mask))
        line0 += len(group) * qw
    return BlockedMask(runs, dense, buckets, masked, torch.tensor(take, device=device))


class SDPAAttention:
    """torch.nn.functional.scaled_dot_product_attention: causal fast path, dense mask, or
    (on the CPU, for rows of at least ``BLOCKED_MIN_SEQ`` tokens) one call per segment.

    A packed row's mask is block-diagonal (documents, views, predictor segments; plus a
    shared-prefix view's context): the dense path pays S x S pairs per row where the
    blocks allow the sum of the segments' squares. On the CPU the per-segment calls compute
    only those (equal outputs and gradients to the dense path up to float rounding; tests
    /test_attention_blocks.py); on CUDA the dense mask stays (use ``flex`` there: FlexAttention
    skips the masked blocks in one kernel)."""

    name = "sdpa"
    BLOCKED_MIN_SEQ = 512  # shorter rows: the dense mask is cheap and one call beats many

    def __init__(self, blocked: bool | None = None):
        self.blocked = blocked  # None: automatic (CPU and long rows); True/False: forced (tests)

    def build_mask(self, meta: MaskMeta, batch: int, seq_len: int, device: torch.device, packed: bool = False):
        """``packed``: one row of many segments (the model's unpadded forward): per-segment
        on the CPU whatever its length."""
        if meta.is_causal_only:
            return None
        auto = device.type == "cpu" and (packed or seq_len >= self.BLOCKED_MIN_SEQ)
        if (auto if self.blocked is None else self.blocked) and not torch.compiler.is_compiling():
            return blocked_mask(meta, seq_len, device)
        return dense_mask(meta, seq_len, device)

    def attend(self, q, k, v, mask) -> torch.Tensor:
        # q: (B, Hq, S, D); k, v: (B, Hkv, S, D)
        if isinstance(mask, BlockedMask):
            if torch.compiler.is_compiling():
                mask = mask.dense
            else:
                return self._attend_blocks(q, k, v, mask)
        gqa = k.shape[1] != q.shape[1]
        if mask is None and gqa and q.device.type == "cpu":
            # the CPU flash kernel reads each k/v head for its whole query group (enable_gqa);
            # on CUDA only some kernels take enable_gqa (others fall back to the O(S^2) math
            # kernel), so there k/v are expanded as below, as torchtitan does
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if gqa:
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


    @staticmethod
    def _attend_blocks(q, k, v, mask: BlockedMask) -> torch.Tensor:
        bsz, n_heads, seq_len, head_dim = q.shape
        gqa = k.shape[1] != n_heads
        # (B*S, H, D) views of the (B, S, H, D) projections the (B, H, S, D) q/k/v transpose
        qf, kf, vf = (t.transpose(1, 2).reshape(bsz * seq_len, t.shape[1], head_dim) for t in (q, k, v))
        outs = []
        for lines in mask.buckets:  # one causal call per length bucket
            n, width = lines.shape
            idx = lines.flatten()
            qs, ks, vs = (t[idx].view(n, width, t.shape[1], head_dim).transpose(1, 2) for t in (qf, kf, vf))
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=gqa)
            outs.append(out.transpose(1, 2).reshape(n * width, n_heads * head_dim))
        for q_lines, k_lines, allowed in mask.masked:  # runs with a context: one call per bucket
            n, qw, kw = q_lines.shape[0], q_lines.shape[1], k_lines.shape[1]
            qs = qf[q_lines.flatten()].view(n, qw, n_heads, head_dim).transpose(1, 2)
            ks, vs = (t[k_lines.flatten()].view(n, kw, t.shape[1], head_dim).transpose(1, 2) for t in (kf, vf))
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=allowed, enable_gqa=gqa)
            outs.append(out.transpose(1, 2).reshape(n * qw, n_heads * head_dim))
        out = torch.cat(outs) if len(outs) > 1 else outs[0]
        return out[mask.take].view(bsz, seq_len, n_heads, head_dim).transpose(1, 2)


class FlexAttention:
    """FlexAttention with a block-sparse BlockMask built from the same rule."""

    name = "flex"

    def __init__(self, block_size: int = 128):
        from torch.nn.attention.flex_attention import flex_attention

        self.block_size = block_size
        # torch.compile(flex_attention) here, outside any trace: made lazily inside the first
        # compiled block it would be a torch.compile call under dynamo (a graph break)
        self._flex = torch.compile(flex_attention, dynamic=False)

    def build_mask(self, meta: MaskMeta, batch: int, seq_len: int, device: torch.device, packed: bool = False):
        from torch.nn.attention.flex_attention import create_block_mask

        if meta.is_causal_only:

            def mask_mod(b, h, q, k):
                return q >= k

            return create_block_mask(mask_mod, None, None, seq_len, seq_len, device=device,
                                     BLOCK_SIZE=self.block_size)
        seg = meta.segment_ids
        if meta.context_segment is None:

            def mask_mod(b, h, q, k):
                return (seg[b, q] == seg[b, k]) & (q >= k)

        else:
            ctx_seg, ctx_len, pos = meta.context_segment, meta.context_len, meta.positions

            def mask_mod(b, h, q, k):
                own = (seg[b, q] == seg[b, k]) & (q >= k)
                ctx = (ctx_seg[b, q] == seg[b, k]) & (pos[b, k] < ctx_len[b, q])
                return own | ctx

        return create_block_mask(mask_mod, batch, None, seq_len, seq_len, device=device,
                                 BLOCK_SIZE=self.block_size)

    def attend(self, q, k, v, mask) -> torch.Tensor:
        gqa = k.shape[1] != q.shape[1]
        return self._flex(q, k, v, block_mask=mask, enable_gqa=gqa)


def build_attention_backend(name: str):
    if name == "sdpa":
        return SDPAAttention()
    if name == "flex":
        return FlexAttention()
    raise ValueError(f"unknown attention backend '{name}'; use 'sdpa' or 'flex'")
