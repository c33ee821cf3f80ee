"""The objective protocol and the sum of the configured objectives.

An ``Objective`` (next-token, LLM-JEPA, STP, or one of your own) owns everything about
itself:

- ``special_tokens()``: the tokens its samples carry (added to the tokenizer if missing);
- ``wrap_samples(encode, ctx)``: extra segments for each chat/pairs sample (JEPA's views);
- ``collate(batch, rows, ctx, index)``: its record for the loss (a dataclass of tensors,
  moved to the device with the batch) and how many loss items the micro-batch holds;
- ``heads(dim)``: its trainable modules beside the model (STP's linear predictor);
- ``loss(outputs, batch, heads, gather, rank)``: a ``Term``: the sum of its loss over the micro-batch's
  items, the sums of its extra metrics, and detached tensors for log-step diagnostics;
- ``diagnostics(kept, gather)`` and ``host_metrics(totals)``: what it logs besides its loss.

Every term is a sum over its items divided by the items summed over the step's micro-batches
and the data-parallel ranks (``counts``), weighted by ``weight``: a result does not depend on
the number of ranks or micro-batches. ``Objectives`` adds the terms in order; the loop,
validation, checkpoints and metrics only ever talk to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from titan_jepa.data.batch import COUNT_FIELDS, Batch


@dataclass
class DataContext:
    """What an objective's data hooks may read: the run's config and tokenizer, the row
    length, the seed and the batch slot (which makes random choices resumable), and the
    bad-input policy."""

    cfg: Any
    tokenizer: Any
    seq_len: int
    seed: int
    slot: int
    bad: Any


def hidden_at(hidden, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """(M, D): the final hidden states at (rows[i], cols[i]) of the whole rows. ``hidden`` is
    the model's (B, S, D) tensor, or a reader of rows held by a group of processes (context
    parallelism's ``GatheredRows``: ``.at(rows, cols)``, the same M rows on each)."""
    return hidden[rows, cols] if isinstance(hidden, torch.Tensor) else hidden.at(rows, cols)


def own_items(hidden, m: int) -> slice:
    """Which of a micro-batch's ``m`` loss items this process computes: all of them, unless
    the hidden states are a group's reader (then its block: each item once over the group)."""
    return slice(0, m) if isinstance(hidden, torch.Tensor) else hidden.own_items(m)


@dataclass
class Term:
    """One objective on one micro-batch: ``loss_sum`` over its items (the gradient flows
    through it), ``metric_sums`` (detached, divided by the same items when logged) and
    ``kept`` (detached tensors of a log step, for ``diagnostics``)."""

    loss_sum: torch.Tensor
    metric_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """The protocol (see the module docstring); every hook has a harmless default."""

    name: str = ""
    weight: float = 1.0
    metric_names: tuple[str, ...] = ()  # the keys of Term.metric_sums, in order
    adds_segments: bool = False  # its samples carry extra segments (the token kinds are logged)

    def special_tokens(self) -> list[str]:
        return []

    def wrap_samples(self, encode: Callable, ctx: DataContext) -> Callable:
        return encode

    def collate(self, batch: Batch, rows: list, ctx: DataContext, index: int) -> tuple[Any, int]:
        """(record for the loss or None, loss items in this micro-batch)."""
        return None, 0

    def heads(self, dim: int) -> dict[str, nn.Module]:
        return {}

    def loss(self, outputs, batch: Batch, heads: nn.ModuleDict | None, gather: Callable | None = None,
             rank: int = 0) -> Term:
        """``gather``: a differentiable all-gather over the data-parallel ranks (None with one),
        ``rank``: this rank's index in its result (InfoNCE's negatives use them)."""
        raise NotImplementedError

    def diagnostics(self, kept: list[dict[str, torch.Tensor]], gather: Callable | None) -> dict[str, float]:
        """Log-step diagnostics from the micro-batches' ``Term.kept`` (every dp rank calls it)."""
        return {}

    def host_metrics(self, totals: dict[str, float]) -> dict[str, float]:
        """More logged numbers from the step's global counts (``totals``: COUNT_FIELDS and the
        items of every objective, by name)."""
        return {}

    def head_flops(self, items: float, dim: int) -> float:
        """Training FLOPs of its heads for ``items`` loss items (forward + backward)."""
        return 0.0


@dataclass
class Result:
    """``Objectives`` on one micro-batch: the loss to backpropagate, the detached sums (in
    ``Objectives.sum_names`` order, float64) and the diagnostics' kept tensors by objective."""

    loss: torch.Tensor
    sums: torch.Tensor
    kept: dict[str, dict[str, torch.Tensor]]


class Objectives:
    """The configured objectives, summed: the loss of one micro-batch and the step's metrics."""

    def __init__(self, objectives: list[Objective], heads: nn.ModuleDict | None = None,
                 gather: Callable | None = None, rank: int = 0):
        """``heads``: the objectives' heads (objectives/heads.py), parallelised like the model;
        ``gather``/``rank``: the data-parallel all-gather (None with one rank) and this rank."""
        names = [o.name for o in objectives]
        if not objectives or len(set(names)) != len(names) or "" in names:
            raise ValueError(f"objectives need distinct non-empty names, got {names}")
        self.objectives, self.heads, self.gather, self.rank = objectives, heads, gather, rank
        self.sum_names = [n for o in objectives for n in (o.name, *(f"{o.name}_{m}" for m in o.metric_names))]
        # the count vector: COUNT_FIELDS, then each objective's items (data/batch.py)
        self.count_names = [*COUNT_FIELDS, *names]

    def count(self, counts: torch.Tensor, name: str) -> torch.Tensor:
        return counts[self.count_names.index(name)]

    def __call__(self, outputs, batch: Batch, counts: torch.Tensor, keep: bool = False) -> Result:
        """``outputs``: the model's ModelOutputs of ``batch``; ``counts``: the step's global
        count vector; ``keep``: a log step (keep the diagnostics' tensors)."""
        loss, sums, kept = None, [], {}
        for o in self.objectives:
            term = o.loss(outputs, batch, self.heads, self.gather, self.rank)
            part = o.weight * term.loss_sum / self.count(counts, o.name).clamp(min=1)
            loss = part if loss is None else loss + part
            sums += [term.loss_sum.detach(), *(term.metric_sums[m] for m in o.metric_names)]
            if keep and term.kept:
                kept[o.name] = term.kept
        return Result(loss, torch.stack(sums).double(), kept)

    def loss(self, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The global step loss from the global sums and counts, a tensor (no host sync)."""
        loss = None
        for o in self.objectives:
            part = o.weight * (sums[self.sum_names.index(o.name)] / self.count(counts, o.name).clamp(min=1))
            loss = part if loss is None else loss + part
        return loss

    def metrics(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """The step's logged metrics from the global sums and counts (host numbers: sync steps)."""
        totals = dict(zip(self.count_names, counts.tolist()))
        s = dict(zip(self.sum_names, sums.tolist()))
        out = {"loss": float(self.loss(sums, counts))}
        several = len(self.objectives) > 1
        for o in self.objectives:
            n = max(totals[o.name], 1)
            if several:
                out[f"{o.name}_loss"] = s[o.name] / n
            out.update({f"{o.name}_{m}": s[f"{o.name}_{m}"] / n for m in o.metric_names})
            out.update(o.host_metrics(totals))
        if any(o.adds_segments for o in self.objectives):
            out.update(tokens_full=totals["full_tokens"], tokens_view=totals["view_tokens"],
                       tokens_pad=totals["pad_tokens"])
        return out

    def diagnostics(self, kept: list[dict[str, dict[str, torch.Tensor]]], gather: Callable | None) -> dict[str, float]:
        """Every objective's log-step diagnostics from the step's micro-batches' kept
        tensors; ``gather`` (an all-gather over the data-parallel ranks, or None) is called
        here, by every rank of the group."""
        out = {}
        for o in self.objectives:
            out.update(o.diagnostics([k[o.name] for k in kept if o.name in k], gather))
        return out

    def metric_names(self) -> list[str]:
        """The names ``metrics`` logs (validation logs them under val/)."""
        names = ["loss"]
        for o in self.objectives:
            if len(self.objectives) > 1:
                names.append(f"{o.name}_loss")
            names += [f"{o.name}_{m}" for m in o.metric_names]
            names += list(o.host_metrics({n: 1.0 for n in self.count_names}))
        return names

    def head_flops(self, counts: torch.Tensor, dim: int) -> float:
        return sum(o.head_flops(float(self.count(counts, o.name)), dim) for o in self.objectives)
