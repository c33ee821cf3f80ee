"""Pipeline parallelism from outside the model, with ``torch.distributed.pipelining``.

    pipeline = build_pipeline(model, dims, mesh, cfg, device)   # model: the whole meta Transformer
    model.to_empty(device=device); model.init_weights(...)       # as without pp
    sums = pipeline.step(micro_batches, loss_fn)                  # forward + backward of one step
    grad_norm = pipeline.clip_grad_norm_(max_norm, heads)

Splitting. The layers are cut into ``pp x pp_stages_per_rank`` consecutive stages (evenly,
or ``pp_layers_per_stage``); the first stage also holds the token embedding, the last the
final norm and the output (the objectives' heads, such as the STP predictor, are built on
the last stage's ranks only, beside the model: train.py). Stage s sits on pp rank s % pp (looped schedules) or, for ZBVZeroBubble, on the
ranks of a V (rank r holds stages r and 2 pp - 1 - r). ``build_pipeline`` deletes from the
meta model everything this rank's stages do not own and keeps the names of the rest, so
the pruned model's state-dict keys are those of the 1-process model: its seeded
``init_weights`` draws the same values (each parameter from a generator seeded by (seed,
name)), and DCP checkpoints load across layouts. The pruned model is what the optimizer,
clipping and checkpoints see; each stage is a small :class:`StageModule` calling the parts
it owns in the Transformer's order.

Parallelism inside a stage: TP/SP is applied to the whole meta model before pruning (the
plan of ``parallelize.apply_tp``), then activation checkpointing and compile per block, and
FSDP2 per stage (each block, then the stage as the root unit), so
``PipelineStage`` sees an FSDP module and syncs gradients on the last micro-batch only.

The batch reaches every stage. Every pp rank of a data-parallel group loads the same
micro-batches (the loaders are per batch slot and deterministic), so only the hidden states
travel between stages. A stage takes its micro-batch's metadata (positions, segment ids,
shared-prefix context: the attention mask and RoPE angles) from the step's list, in the
order the schedule runs its forwards (every schedule runs a stage's forwards in micro-batch
order; the last stage checks it against the schedule's micro-batch index). The objective
(``loss_fn``) runs on the last stage on (logits, final normed hidden states); under TP the
logits are vocab-sharded and the caller runs the step inside ``loss_context`` (loss parallel).

Loss. ``loss_fn(outputs, micro_batch) -> (loss, sums)`` returns the loss to backpropagate
(the caller scales it: sum over targets / global count, times dp for FSDP's averaging); the
schedules are built with ``scale_grads=False`` so nothing else rescales the gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.pipelining import (
    PipelineStage,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
)

from titan_jepa.config import JobConfig
from titan_jepa.models.attention import MaskMeta
from titan_jepa.parallel.float8 import apply_float8
from titan_jepa.parallel.mesh import ParallelDims, device_type_for
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.parallel.parallelize import apply_ac, apply_compile, apply_tp, block_mp_policy, clip_grad_norm_

SCHEDULES = {"1F1B": Schedule1F1B, "GPipe": ScheduleGPipe, "Interleaved1F1B": ScheduleInterleaved1F1B,
             "InterleavedZeroBubble": ScheduleInterleavedZeroBubble, "ZBVZeroBubble": ScheduleZBVZeroBubble}
SINGLE_STAGE = ("1F1B", "GPipe")  # one stage per rank; the others take a list of stages


def stage_layers(n_layers: int, num_stages: int, layers_per_stage: list[int] | None = None) -> list[list[int]]:
    """The layer indices of each stage: ``layers_per_stage`` if given, else an even split."""
    sizes = list(layers_per_stage) if layers_per_stage else [n_layers // num_stages] * num_stages
    out, start = [], 0
    for n in sizes:
        out.append(list(range(start, start + n)))
        start += n
    return out


def stages_of_rank(pp_rank: int, pp: int, stages_per_rank: int, schedule: str) -> list[int]:
    """The stage indices pp rank ``pp_rank`` runs: looped (s % pp), or a V for ZBVZeroBubble."""
    if schedule == "ZBVZeroBubble":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + k * pp for k in range(stages_per_rank)]


class MicroBatchFeed:
    """The step's micro-batches, read by every stage of this rank in forward order."""

    def __init__(self):
        self.batches: list = []

    def set(self, batches: list) -> None:
        self.batches = batches


class StageModule(nn.Module):
    """One pipeline stage: the Transformer parts it owns, called as Transformer.forward calls
    them. Its submodules are the pruned model's own modules (shared, same names), so FSDP
    sharding them here shards the model the optimizer and checkpoints see.

    forward(tokens) on the first stage, forward(h) on the others; the last stage returns
    (logits, final normed hidden states), the others the residual stream (TP-local)."""

    def __init__(self, model: nn.Module, index: int, num_stages: int, layer_ids: list[int],
                 feed: MicroBatchFeed):
        super().__init__()
        self.index, self.is_first, self.is_last = index, index == 0, index == num_stages - 1
        self.tok_embeddings = model.tok_embeddings if self.is_first else None
        self.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layer_ids})
        self.norm = model.norm if self.is_last else None
        self.output = model.output if self.is_last else None
        self._model = [model]  # not a submodule: the RoPE tables and the attention backend
        self._feed = feed
        self.forwards = 0  # forwards run this step: the index of the next micro-batch

    def forward(self, x: torch.Tensor):
        mb = self._feed.batches[self.forwards]
        self.forwards += 1
        model = self._model[0]
        bsz, seqlen = mb.tokens.shape
        if mb.positions is None:
            cos, sin = model.rope_cos[None, :seqlen], model.rope_sin[None, :seqlen]
        else:
            cos, sin = model.rope_cos[mb.positions], model.rope_sin[mb.positions]
        meta = MaskMeta(mb.segment_ids, mb.positions, mb.context_segment, mb.context_len)
        mask = model.backend.build_mask(meta, bsz, seqlen, mb.tokens.device)
        h = self.tok_embeddings(x) if self.is_first else x
        for layer in self.layers.values():
            h = layer(h, cos, sin, mask)
        if not self.is_last:
            return h
        h = self.norm(h)
        return self.output(h), h


class LastStageOutputs:
    """Stands in for the model in an objective's call on the last stage: calling it returns
    what the stage computed (logits, hidden); other attributes are the pruned model's."""

    def __init__(self, outputs: tuple[torch.Tensor, torch.Tensor], model: nn.Module):
        self._outputs, self._model = outputs, model

    def __call__(self, *args, **kwargs):
        return self._outputs

    def __getattr__(self, name):
        return getattr(self._model, name)


class PipelinedModel:
    """This rank's stages of the pipeline and the schedule that runs them."""

    def __init__(self, model: nn.Module, stages: list[StageModule], feed: MicroBatchFeed,
                 pp_group, schedule: str, n_microbatches: int, device: torch.device,
                 examples: dict[str, torch.Tensor]):
        self.model, self.stages, self.feed, self.pp_group = model, stages, feed, pp_group
        self._loss_fn: Callable | None = None
        self._sums: list[torch.Tensor] = []
        num_stages = dist.get_world_size(pp_group) * len(stages)
        self.pipeline_stages = []
        for s in stages:
            inputs = examples["tokens"] if s.is_first else examples["residual"]
            outputs = (examples["logits"], examples["hidden"]) if s.is_last else examples["residual"]
            self.pipeline_stages.append(PipelineStage(s, s.index, num_stages, device, input_args=inputs,
                                                      output_args=outputs, group=pp_group))
        cls = SCHEDULES[schedule]
        first = self.pipeline_stages[0] if schedule in SINGLE_STAGE else self.pipeline_stages
        self.schedule = cls(first, n_microbatches=n_microbatches, loss_fn=self._schedule_loss, scale_grads=False)

    def _schedule_loss(self, outputs, target: torch.Tensor) -> torch.Tensor:
        index = int(target.reshape(-1)[0])  # the schedule's micro-batch index (a CPU tensor)
        last = next(s for s in self.stages if s.is_last)
        if last.forwards - 1 != index:
            raise RuntimeError(f"pipeline: the last stage ran micro-batch {last.forwards - 1} but the "
                               f"schedule computes the loss of micro-batch {index}")
        loss, sums = self._loss_fn(outputs, self.feed.batches[index])
        self._sums.append(sums.detach())
        return loss

    def eval_step(self, micro_batches: list, loss_fn: Callable, sums: torch.Tensor) -> None:
        """``step`` forward only (validation): the same micro-batch bookkeeping, no backward."""
        self.step(micro_batches, loss_fn, sums, backward=False)

    def step(self, micro_batches: list, loss_fn: Callable, sums: torch.Tensor, backward: bool = True) -> None:
        """Forward and backward of the step's micro-batches through the pipeline.

        ``loss_fn(outputs, micro_batch) -> (loss, mb_sums)`` runs on the last stage; the
        micro-batches' ``mb_sums`` are added to ``sums`` on every pp rank (summed over the pp
        group, to which the ranks without the last stage contribute zeros)."""
        self.feed.set(micro_batches)
        for s in self.stages:
            s.forwards = 0
        self._loss_fn, self._sums = loss_fn, []
        tokens = torch.cat([mb.tokens for mb in micro_batches])
        target = torch.arange(len(micro_batches))  # stays on the CPU: read by _schedule_loss
        if backward:
            run = lambda *args: self.schedule.step(*args, target=target, return_outputs=False)  # noqa: E731
        else:
            run = lambda *args: self.schedule.eval(*args, target=target)  # noqa: E731
        run(tokens) if any(s.is_first for s in self.stages) else run()
        total = torch.stack(self._sums).sum(0).to(sums) if self._sums else torch.zeros_like(sums)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.pp_group)
        sums += total
        self._loss_fn, self._sums = None, []

    @property
    def has_last_stage(self) -> bool:
        """Whether this rank runs the last stage (where the objective and its heads live)."""
        return any(s.is_last for s in self.stages)

    def outputs(self, outputs) -> LastStageOutputs:
        """The objective's stand-in for the model on the last stage (see LastStageOutputs)."""
        return LastStageOutputs(outputs, self.model)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float, heads: nn.Module | None = None) -> torch.Tensor:
        """The global gradient norm (over dp/tp shards and every pipeline stage, the
        objectives' ``heads`` of the last stage included), then clip."""
        params = [p for m in (self.model, heads) if m is not None for p in m.parameters() if p.requires_grad]
        local = clip_grad_norm_(params, 0.0)  # this rank's stages, whole over dp and tp
        sq = local.double().pow(2).reshape(1)
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=self.pp_group)
        total = sq.sqrt().to(local.dtype).reshape(())
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total


def _prune(model: nn.Module, owned_layers: set[int], first: bool, last: bool) -> None:
    """Delete what this rank's stages do not own; the names of the rest stay."""
    for key in list(model.layers.keys()):
        if int(key) not in owned_layers:
            del model.layers[key]
    if not first:
        model.tok_embeddings = None
    if not last:
        model.norm = None
        model.output = None


def build_pipeline(model: nn.Module, dims: ParallelDims, mesh: DeviceMesh, cfg: JobConfig,
                   device: torch.device) -> PipelinedModel:
    """Prune the whole meta ``model`` to this rank's stages, parallelise them (TP, AC,
    compile, FSDP2 per stage) and build the schedule. The model stays on the meta device:
    the caller materialises and initialises it as without pp."""
    p = cfg.parallelism
    pp_mesh = mesh["pp"]
    pp_rank, pp = pp_mesh.get_local_rank(), dims.pp
    num_stages = pp * p.pp_stages_per_rank
    layers = stage_layers(model.args.n_layers, num_stages, p.pp_layers_per_stage)
    mine = stages_of_rank(pp_rank, pp, p.pp_stages_per_rank, p.pp_schedule)
    owned = {i for s in mine for i in layers[s]}
    if cfg.float8.enable:
        apply_float8(model, cfg, device_type_for(cfg))
    if dims.tp > 1:
        apply_tp(model, mesh["tp"])  # on the whole model: the plan names every part
    _prune(model, owned, 0 in mine, num_stages - 1 in mine)
    if cfg.activation_checkpoint.mode != "none":
        apply_ac(model, cfg.activation_checkpoint.mode, cfg.activation_checkpoint.selective_every)
    if cfg.compile.enable:
        apply_compile(model)
    feed = MicroBatchFeed()
    stages = [StageModule(model, s, num_stages, layers[s], feed) for s in sorted(mine)]
    act_dtype = torch.float32
    if dims.fsdp_enabled:
        dp_mesh = mesh["dp_replicate", "dp_shard"] if dims.dp_replicate > 1 else mesh["dp_shard"]
        mp = MixedPrecisionPolicy(param_dtype=DTYPES[cfg.training.mixed_precision_param],
                                  reduce_dtype=DTYPES[cfg.training.mixed_precision_reduce])
        # "default" under pp: keep the parameters gathered from forward to backward, or every
        # micro-batch would gather them again (torchtitan does the same)
        reshard = p.fsdp_reshard_after_forward == "always"
        for stage in stages:
            for block in stage.layers.values():
                fully_shard(block, mesh=dp_mesh, mp_policy=block_mp_policy(mp), reshard_after_forward=reshard)
            fully_shard(stage, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
        act_dtype = DTYPES[cfg.training.mixed_precision_param]
    # what travels between stages (static shapes: no shape inference at the first step)
    bsz, seq = cfg.training.local_batch_size, cfg.training.seq_len
    a = model.args
    examples = {
        "tokens": torch.empty(bsz, seq, dtype=torch.long, device="meta"),
        # the residual stream between blocks: sequence-sharded under TP (sequence parallel)
        "residual": torch.empty(bsz, seq // dims.tp, a.dim, dtype=act_dtype, device="meta", requires_grad=True),
        # the last stage's outputs, whole on every tp rank
        "hidden": torch.empty(bsz, seq, a.dim, dtype=act_dtype, device="meta", requires_grad=True),
        "logits": torch.empty(bsz, seq, a.vocab_size, dtype=act_dtype, device="meta", requires_grad=True),
    }
    n_micro = cfg.training.global_batch_size // (cfg.training.local_batch_size * dims.dp)
    return PipelinedModel(model, stages, feed, pp_mesh.get_group(), p.pp_schedule, n_micro, device, examples)
