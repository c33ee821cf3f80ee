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


def dense_mask(meta: MaskMeta, seq_len: int, device: torch.device) -> torch.Tensor:
    """The rule above as a (B, 1, S, S) boolean mask (True = may attend)."""
    idx = torch.arange(seq_len, device=device)
    causal = idx[None, :, None] >= idx[None, None, :]
    seg = meta.segment_ids
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    if meta.context_segment is not None:
        ctx = (meta.context_segment[:, :, None] == seg[:, None, :]) & (
            meta.positions[:, None, :] < meta.context_len[:, :, None]
        )
        allowed = allowed | ctx
    return allowed[:, None]


class SDPAAttention:
    """torch.nn.functional.scaled_dot_product_attention: causal fast path or dense mask."""

    name = "sdpa"

    def build_mask(self, meta: MaskMeta, batch: int, seq_len: int, device: torch.device):
        if meta.is_causal_only:
            return None
        return dense_mask(meta, seq_len, device)

    def attend(self, q, k, v, mask) -> torch.Tensor:
        # q: (B, Hq, S, D); k, v: (B, Hkv, S, D)
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


class FlexAttention:
    """FlexAttention with a block-sparse BlockMask built from the same rule."""

    name = "flex"

    def __init__(self, block_size: int = 128):
        from torch.nn.attention.flex_attention import flex_attention

        self.block_size = block_size
        # torch.compile(flex_attention) here, outside any trace: made lazily inside the first
        # compiled block it would be a torch.compile call under dynamo (a graph break)
        self._flex = torch.compile(flex_attention, dynamic=False)

    def build_mask(self, meta: MaskMeta, batch: int, seq_len: int, device: torch.device):
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
