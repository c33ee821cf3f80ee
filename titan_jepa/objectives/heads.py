"""The objectives' trainable modules beside the backbone (e.g. STP's linear predictor).

They are not part of the Transformer: the model and its export hold the Llama weights
alone. train.py builds them on the meta device from the objectives' ``heads(dim)``,
parallelises them (parallel/parallelize.py ``parallelize_heads``), puts their parameters in
the optimizer after the model's, and checkpoints keep them under a "heads" entry.
Each head starts as its objective initialises it (``init_weights``: a square head starts
as the identity, so training starts from the head-free loss).
"""

from __future__ import annotations

import torch
from torch import nn


class Heads(nn.ModuleDict):
    """Named head modules; each is called on its own (an FSDP unit of its own)."""

    @torch.no_grad()
    def init_weights(self, write) -> None:
        """Square linear heads start as the identity. ``write(param, full)`` stores a whole
        tensor into a (possibly sharded) one."""
        for module in self.values():
            w = module.weight
            write(w, torch.eye(w.shape[0], dtype=w.dtype, device=w.device))


def build_heads(objectives, dim: int, device: torch.device | str = "meta") -> Heads | None:
    """The heads the objectives need (``Objective.heads``), or None when they need none."""
    heads = Heads()
    with torch.device(device):
        for o in objectives:
            for name, module in o.heads(dim).items():
                heads[name] = module
    return heads if len(heads) else None
