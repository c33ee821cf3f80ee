"""Loss parallel: the next-token cross entropy on vocab-sharded logits under TP.

Under tensor parallelism the output projection keeps its logits sharded on the vocabulary
(a DTensor ``Shard(-1)`` on the tp mesh, see ``apply_tp``), so no rank holds B x S x V
logits. ``torch.distributed.tensor.parallel.loss_parallel`` makes ``F.cross_entropy`` on
such logits all-reduce the per-token max, sum-exp and target logit over the tp ranks
instead of gathering the vocabulary; its backward (which must run inside the same
context) gives each rank the gradient of its own vocabulary slice.

The loss it returns is a scalar DTensor, ``Replicate`` on the tp mesh (every rank holds the
whole value). The objectives add plain tensors to it and stack it into plain sums, so the
context hands them a plain tensor instead (``full_tensor``: no communication for a
Replicate DTensor; its backward turns the plain gradient back into a DTensor). The
objectives themselves stay free of parallelism: they call ``F.cross_entropy`` as usual.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel
from torch.overrides import TorchFunctionMode


def vocab_parallel(model: nn.Module) -> bool:
    """Whether the model's output projection is sharded over a tp mesh (``apply_tp`` ran)."""
    output = getattr(model, "output", None)  # None on a pipeline stage without the head
    weight = output.weight if output is not None else None
    return isinstance(weight, DTensor) and "tp" in (weight.device_mesh.mesh_dim_names or ())


class _PlainLoss(TorchFunctionMode):
    """Return ``F.cross_entropy``'s (Replicate) DTensor result as a plain tensor."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.cross_entropy and isinstance(out, DTensor):
            out = out.full_tensor()
        return out


@contextlib.contextmanager
def loss_context(model: nn.Module):
    """The context for one micro-batch's forward AND backward (torchtitan's train context):
    loss parallel when the model's logits are vocab-sharded (tp > 1), else a no-op."""
    if not vocab_parallel(model):
        yield
        return
    with loss_parallel(), _PlainLoss():
        yield
