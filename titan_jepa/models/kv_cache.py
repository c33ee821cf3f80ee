"""A key/value cache for incremental decoding (no torch.distributed here).

One ``KVCache`` per transformer layer holds preallocated ``(B, Hkv, max_len, D)`` key and
value buffers. ``Attention.forward`` calls ``update(k, v)`` with the new tokens' (already
rotated) keys and values; the cache appends them at its current length and returns all
keys/values so far plus an SDPA boolean mask ``(B, 1, q_len, kv_len)`` (True = may attend):

    visible(query i, key j) = j <= i                       (causal, in cache slots)
                          and j >= pad_lens[b]              (hides the prompt's left padding)
                          or  j == i                        (a pad query sees itself only)

Prompts of a batch are left-padded to one length, so every row's new tokens land in the
same cache slot; row b's first ``pad_lens[b]`` slots are padding. The ``j == i`` clause only
matters for the padding's own queries: it keeps their rows of the softmax finite (a row
with no visible key would give NaN, and a NaN value vector poisons the matmul even where
its weight is zero). Real tokens never see padding. Rotary positions are given explicitly
by the caller (0 at each prompt's first real token), so padding shifts nothing.

Use ``build_kv_caches(model, batch, max_len, pad_lens)`` to make one cache per layer and
pass the list as ``model(tokens, positions=..., kv_caches=caches)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 pad_lens: torch.Tensor | None = None):
        self.max_len = max_len
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        if pad_lens is None:
            pad_lens = torch.zeros(batch, dtype=torch.long)
        self.pad_lens = pad_lens.to(device=device, dtype=torch.long)
        slots = torch.arange(max_len, device=device)
        # (B, max_len): True where the slot holds a real (non-padding) token
        self.real = slots[None, :] >= self.pad_lens[:, None]

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """k, v: (B, Hkv, q_len, D) of the new tokens -> (k_all, v_all, mask)."""
        q_len = k.shape[2]
        start, end = self.length, self.length + q_len
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[:, :, start:end] = k.to(self.k.dtype)
        self.v[:, :, start:end] = v.to(self.v.dtype)
        self.length = end
        q_slot = torch.arange(start, end, device=k.device)[:, None]
        k_slot = torch.arange(end, device=k.device)[None, :]
        causal = k_slot <= q_slot  # (q_len, kv_len)
        mask = (causal[None] & self.real[:, None, :end]) | (k_slot == q_slot)[None]
        return self.k[:, :, :end], self.v[:, :, :end], mask[:, None]

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SDPA with the cache's boolean mask (any attention backend's model can decode)."""
        if k.shape[1] != q.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)


def build_kv_caches(model, batch: int, max_len: int, pad_lens: torch.Tensor | None = None,
                    dtype: torch.dtype | None = None) -> list[KVCache]:
    """One cache per layer of ``model`` (a titan_jepa Transformer), on its device and dtype."""
    args = model.args
    w = model.tok_embeddings.weight
    return [KVCache(batch, args.n_kv_heads, max_len, args.head_dim, dtype=dtype or w.dtype,
                    device=w.device, pad_lens=pad_lens) for _ in range(args.n_layers)]
