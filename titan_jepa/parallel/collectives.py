"""Small collectives: where this process sits (``rank_world``), and the all-gather the
objectives receive as a plain callable (they never import torch.distributed)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_all_gather(group):
    """A differentiable all-gather of (n_r, ...) tensors whose n_r may differ per rank.

    Returns ``gather(t) -> [t_0, ..., t_{world-1}]``; gradients flow back to every rank's
    input (all-to-all on gloo, reduce-scatter on NCCL)."""

    def gather(t: torch.Tensor) -> list[torch.Tensor]:
        world = dist.get_world_size(group)
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(sizes, n, group=group)
        sizes = [int(s) for s in sizes]
        pad = max(sizes) - t.shape[0]
        padded = F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)) if pad else t
        parts = dist_nn.all_gather(padded, group=group)
        return [p[:s] for p, s in zip(parts, sizes)]

    return gather
