"""torchtitan's two weight namings, detected from a checkpoint's keys and mapped to ours.

    torchtitan <= v0.2.x (and titan_jepa)    torchtitan after v0.2 (its current main)
    layers.N.attention.wq.weight             layers.N.attention.qkv_linear.wq.weight
    layers.N.attention.wk.weight             layers.N.attention.qkv_linear.wk.weight
    layers.N.attention.wv.weight             layers.N.attention.qkv_linear.wv.weight
    output.weight                            lm_head.weight

Every other name (tok_embeddings, attention.wo, feed_forward.w1/w2/w3, the norms) is the
same in both. A key may carry a prefix (``model.`` in our training checkpoints; none in
torchtitan's model-only DCP folders); the mapping keeps it.
"""

from __future__ import annotations

import re
from pathlib import Path

V02, NEW = "v0.2", "qkv_linear"
_QKV_NEW = re.compile(r"(^|\.)attention\.qkv_linear\.(w[qkv])\.")
_QKV_OURS = re.compile(r"(^|\.)attention\.(w[qkv])\.")
_HEAD_NEW = re.compile(r"(^|\.)lm_head\.")
_HEAD_OURS = re.compile(r"(^|\.)output\.")


def naming(keys) -> str:
    """``NEW`` when any key uses the post-v0.2 names, else ``V02`` (ours)."""
    return NEW if any(_QKV_NEW.search(k) or _HEAD_NEW.search(k) for k in keys) else V02


def to_ours(key: str) -> str:
    """A post-v0.2 torchtitan name -> ours (ours pass through unchanged)."""
    return _HEAD_NEW.sub(r"\1output.", _QKV_NEW.sub(r"\1attention.\2.", key))


def to_new(key: str) -> str:
    """Our name -> torchtitan's post-v0.2 name."""
    return _HEAD_OURS.sub(r"\1lm_head.", _QKV_OURS.sub(r"\1attention.qkv_linear.\2.", key))


def rename_to_ours(sd: dict) -> dict:
    """A state dict in either naming -> our names (the same values)."""
    return {to_ours(k): v for k, v in sd.items()} if naming(sd) == NEW else sd


def dcp_naming(path: str | Path) -> str:
    """The naming of a DCP folder, read from its ``.metadata`` keys."""
    import torch.distributed.checkpoint as dcp

    return naming(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
