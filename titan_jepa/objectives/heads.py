"""Trainable modules the objectives own beside the backbone (the STP linear predictor).

They are not part of the Transformer: the model and its export hold the Llama weights
alone. train.py builds the heads on the meta device next to the model, parallelises them
(parallel/parallelize.py ``parallelize_heads``), puts their parameters in the optimizer
after the model's, and the checkpoints keep them under a "heads" entry (checkpoint.py).
Parameter names (``stp_predictor.weight``) are those the predictor had when it lived on
the model, so optimizer states of older checkpoints still match.
"""

from __future__ import annotations

import torch
from torch import nn

from titan_jepa.config import JobConfig

STP_PREDICTOR = "stp_predictor"


class Heads(nn.ModuleDict):
    """Named head modules; each is called on its own (an FSDP unit of its own)."""

    @torch.no_grad()
    def init_weights(self, write) -> None:
        """The STP predictor starts as the identity: training starts from the predictor-free
        loss. ``write(param, full)`` stores a whole tensor into a (possibly sharded) one."""
        if STP_PREDICTOR in self:
            w = self[STP_PREDICTOR].weight
            write(w, torch.eye(w.shape[0], dtype=w.dtype, device=w.device))

    @property
    def tube_predictor(self) -> nn.Module | None:
        """The STP linear predictor, or None."""
        return self[STP_PREDICTOR] if STP_PREDICTOR in self else None


def build_heads(cfg: JobConfig, dim: int, device: torch.device | str = "meta") -> Heads | None:
    """The heads the enabled objectives need, or None when they need none."""
    heads = Heads()
    if cfg.stp.enable and cfg.stp.linear_predictor:
        with torch.device(device):
            heads[STP_PREDICTOR] = nn.Linear(dim, dim, bias=False)
    return heads if len(heads) else None
