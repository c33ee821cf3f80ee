"""How one step's micro-batches run through the model, whatever the layout.

    results = runner.run(micro_batches, loss_fn, backward=True)

``loss_fn(outputs, micro_batch) -> (loss, result)`` gets the model's ModelOutputs of one
micro-batch; ``loss`` is backpropagated (``backward``) and ``result`` collected. Without
pipeline parallelism (``LocalRunner``) every micro-batch is one forward and one backward of
the model, inside ``loss_context`` (loss parallel under TP), the forward and the loss under
``torch.autocast`` when ``autocast`` names a dtype (mixed precision without FSDP, which
otherwise casts the parameters itself; ``parallelize.autocast_dtype``); with it, ``PipelineRunner``
(parallel/pipeline.py) runs the schedule and returns the results of its last stage. The
training loop and validation call ``run``, ``share`` (the step's sums from the last stage
to every stage: an all-reduce over the pp group) and ``grad_group`` (the group the gradient
norm is summed over), whatever the layout.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from titan_jepa.parallel.loss_parallel import loss_context


class LocalRunner:
    """The whole model on this rank: each micro-batch's forward and backward in turn."""

    def __init__(self, model: nn.Module, head_on_targets: bool = False, drop_padding: bool = False,
                 autocast: torch.dtype | None = None):
        self.model = model
        self.autocast = autocast  # the compute dtype of the forward and the loss (None: the parameters')
        # the head and the loss on the labelled tokens alone (Batch.targets_at); not under TP,
        # whose vocab-sharded head and loss parallel keep the (B, S) layout
        self.head_on_targets = head_on_targets
        # the layers on the tokens that are not padding alone (Batch.tokens_at): the CPU's
        # per-segment attention, eager (a compiled block would see a new length every step)
        self.drop_padding = drop_padding

    def run(self, micro_batches: list, loss_fn: Callable, backward: bool = True) -> list:
        results = []
        for mb in micro_batches:
            with loss_context(self.model):  # forward and backward inside (loss parallel under TP)
                extra = {}
                if self.head_on_targets and mb.targets_at is not None:
                    extra["logits_at"] = mb.targets_at
                if self.drop_padding and mb.tokens_at is not None:
                    extra["tokens_at"] = mb.tokens_at
                amp = (torch.autocast(mb.tokens.device.type, dtype=self.autocast) if self.autocast is not None
                       else contextlib.nullcontext())
                with amp:  # torch.autocast covers the forward and the loss, never the backward
                    loss, result = loss_fn(self.model(mb.tokens, **mb.mask_inputs(), **extra), mb)
                if backward:
                    loss.backward()
            results.append(result)
        return results

    grad_group = None  # the gradient norm needs no reduction beyond the model's own meshes

    def share(self, sums):
        """The step's loss sums, the same on every rank of the model (already: one stage)."""
        return sums

    def init_buffers(self, device) -> None:
        """Nothing beyond the model's own (``Transformer.init_weights`` makes them)."""
