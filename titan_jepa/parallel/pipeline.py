"""Pipeline parallelism from outside the model, with ``torch.distributed.pipelining``.

    model, runner = build_pipeline(make_model, dims, mesh, cfg, device)
    model.to_empty(device=device); model.init_weights(...)     # as without pp
    results = runner.run(micro_batches, loss_fn)               # forward + backward of one step

Stages. The layers are cut into ``pp x pp_stages_per_rank`` consecutive stages (evenly, or
``pp_layers_per_stage``); the first stage also holds the token embedding, the last the final
norm and the output. Stage s sits on pp rank s % pp (looped schedules) or, for
ZBVZeroBubble, on the ranks of a V (rank r holds stages r and 2 pp - 1 - r). Each stage is
the same Transformer, built on the meta device by ``make_model`` and pruned to what it owns
(``Transformer.prune``: names unchanged), and parallelised by the same ``parallelize`` as a
whole model (TP/SP, AC, compile, FSDP2 with the stage as the root unit). Its forward is the
Transformer's: without an embedding it takes the previous stage's residual stream, without
a head it returns one. The rank's stages are joined into one Transformer
(``Transformer.from_parts``, modules shared) that the optimizer, clipping, checkpoints and
the seeded ``init_weights`` see: its state-dict keys are those of the 1-process model, so the
initial weights equal one process's and DCP checkpoints load across layouts.

The batch reaches every stage. Every pp rank of a data-parallel group loads the same
micro-batches (the loaders are per batch slot and deterministic); the token ids go to the
first stage, and the mask metadata (positions, segment ids, shared-prefix context) to every
stage as keyword arguments, which the schedule splits into the micro-batches. Only hidden
states travel between stages. The objective (``loss_fn``) runs on the last stage on its
ModelOutputs; under TP the logits are vocab-sharded and the caller runs the step inside
``loss_context`` (loss parallel). The schedules are built with ``scale_grads=False``: the
loss the caller returns is already scaled.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from titan_jepa.config import JobConfig
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.models.llama import ModelOutputs, Transformer
from titan_jepa.parallel.context_parallel import CPRunner, apply_cp
from titan_jepa.parallel.loss_parallel import loss_context
from titan_jepa.parallel.mesh import ParallelDims
from titan_jepa.parallel.parallelize import parallelize

# torch.distributed.pipelining is imported when a pipeline is built: it imports torch._dynamo,
# 0.6 s of start-up for every process that never pipelines
SCHEDULES = {"1F1B": "Schedule1F1B", "GPipe": "ScheduleGPipe", "Interleaved1F1B": "ScheduleInterleaved1F1B",
             "InterleavedZeroBubble": "ScheduleInterleavedZeroBubble", "ZBVZeroBubble": "ScheduleZBVZeroBubble"}
SINGLE_STAGE = ("1F1B", "GPipe")  # one stage per rank; the others take a list of stages
MASK_KEYS = ("positions", "segment_ids", "context_segment", "context_len")


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


def mask_inputs(micro_batches: list) -> dict[str, torch.Tensor]:
    """The micro-batches' mask metadata, concatenated on the batch dimension (the schedule
    splits it back); a micro-batch without shared-prefix context gets the no-context value
    when another has one (context segment -1: the same mask)."""
    out = {}
    for key in MASK_KEYS:
        parts = [getattr(mb, key) for mb in micro_batches]
        if all(p is None for p in parts):
            continue
        fill = -1 if key == "context_segment" else 0
        out[key] = torch.cat([p if p is not None else torch.full_like(mb.tokens, fill, dtype=torch.int32)
                              for p, mb in zip(parts, micro_batches)])
    return out


def _no_self_warmup(stage) -> None:
    """torch 2.11's schedules warm up each stage's links by a send and a receive with both
    neighbour stages, also when the neighbour sits on this rank (ZBVZeroBubble's V: rank
    pp - 1 holds two adjacent stages), and gloo cannot send to its own rank ("Pair is not
    connected"). Those pairs are warm-ups alone (later torch versions warm up otherwise):
    drop them."""
    own = getattr(stage, "_get_init_p2p_neighbors_ops", None)
    if own is None:
        return
    me = dist.get_rank()
    stage._get_init_p2p_neighbors_ops = lambda: [op for op in own() if op.peer != me]


class PipelineRunner:
    """This rank's stages and the schedule that runs a step's micro-batches through them.
    ``cp`` (a ``CPRunner`` of the cp group, its model unused): every stage attends through the
    all-gather attention, each micro-batch is sharded over the cp ranks before the schedule
    splits it, and the last stage's objectives read hidden states by global position."""

    def __init__(self, stages: list[tuple[int, Transformer]], num_stages: int, pp_group, schedule: str,
                 n_microbatches: int, device: torch.device, examples: dict[str, torch.Tensor], cp=None):
        self.cp = cp
        self._shardings: list = []
        self.loss_scale = cp.loss_scale if cp is not None else 1
        self.parts = [part for _, part in stages]
        self.stage_indices = [s for s, _ in stages]
        self.pp_group = pp_group
        self.has_first = any(s == 0 for s, _ in stages)
        self.has_last = any(s == num_stages - 1 for s, _ in stages)
        self._loss_fn: Callable | None = None
        self._batches: list = []
        self._results: list = []
        import torch.distributed.pipelining as pipelining

        pipeline_stages = []
        for s, part in stages:
            if s == num_stages - 1:  # PipelineStage handles plain tuples of tensors, not NamedTuples
                part.register_forward_hook(lambda module, args, out: tuple(out))
            inputs = examples["tokens"] if s == 0 else examples["residual"]
            outputs = (examples["logits"], examples["hidden"]) if s == num_stages - 1 else examples["residual"]
            stage = pipelining.PipelineStage(part, s, num_stages, device, input_args=inputs, output_args=outputs, group=pp_group)
            _no_self_warmup(stage)
            pipeline_stages.append(stage)
        cls = getattr(pipelining, SCHEDULES[schedule])
        first = pipeline_stages[0] if schedule in SINGLE_STAGE else pipeline_stages
        self.schedule = cls(first, n_microbatches=n_microbatches, loss_fn=self._schedule_loss, scale_grads=False)

    def _schedule_loss(self, outputs, target: torch.Tensor) -> torch.Tensor:
        i = int(target.reshape(-1)[0])  # the schedule's micro-batch index (a CPU tensor)
        outputs = ModelOutputs(*outputs)
        if self.cp is not None:  # the hidden states of this rank's tokens, read by global position
            outputs = ModelOutputs(outputs.logits, self.cp.gathered(outputs.hidden, self._shardings[i]))
        loss, result = self._loss_fn(outputs, self._batches[i])
        self._results.append(result)
        return loss

    def run(self, micro_batches: list, loss_fn: Callable, backward: bool = True) -> list:
        """The step's micro-batches through the stages (forward and backward, or forward
        alone); ``loss_fn(outputs, micro_batch) -> (loss, result)`` runs on the last stage.
        Returns the results of this rank's last stage (none on the other ranks)."""
        if self.cp is not None:  # each micro-batch sharded over the cp ranks, its mask on global indices
            micro_batches, inputs, self._shardings = self.cp.shard_micro_batches(micro_batches)
        else:
            inputs = mask_inputs(micro_batches)
        self._loss_fn, self._batches, self._results = loss_fn, micro_batches, []
        tokens = torch.cat([mb.tokens for mb in micro_batches])
        target = torch.arange(len(micro_batches))  # stays on the CPU: read by _schedule_loss
        args = (tokens,) if self.has_first else ()
        with loss_context(self.parts[-1]):  # loss parallel under TP (on the rank with the head)
            if backward:
                self.schedule.step(*args, target=target, return_outputs=False, **inputs)
            else:
                self.schedule.eval(*args, target=target, **inputs)
        results, self._results, self._loss_fn, self._batches, self._shardings = self._results, [], None, [], []
        return results

    @property
    def grad_group(self):
        """The gradient norm is summed over every stage: the pp group."""
        return self.pp_group

    def share(self, sums: torch.Tensor) -> torch.Tensor:
        """The step's loss sums on every pp rank: the last stage's ranks hold them, the others
        zeros, summed over the pp group (and under CP over the cp group: each rank its tokens)."""
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.pp_group)
        return self.cp.share(sums) if self.cp is not None else sums

    def init_buffers(self, device) -> None:
        """The stages' RoPE tables (non-persistent buffers, made after to_empty)."""
        for part in self.parts:
            part.init_buffers(device)


def build_pipeline(make_model: Callable[[], Transformer], dims: ParallelDims, mesh: DeviceMesh,
                   cfg: JobConfig, device: torch.device) -> tuple[Transformer, PipelineRunner]:
    """This rank's stages (each ``make_model()`` pruned and parallelised) joined into one
    Transformer, and the runner of their schedule. Everything stays on the meta device: the
    caller materialises and initialises the joined model as without pp, then calls
    ``runner.init_buffers``."""
    p = cfg.parallelism
    pp_mesh = mesh["pp"]
    pp_rank, pp = pp_mesh.get_local_rank(), dims.pp
    num_stages = pp * p.pp_stages_per_rank
    stages, layers = [], None
    for s in sorted(stages_of_rank(pp_rank, pp, p.pp_stages_per_rank, p.pp_schedule)):
        part = make_model()
        layers = layers or stage_layers(part.args.n_layers, num_stages, p.pp_layers_per_stage)
        part.prune(set(layers[s]), embedding=s == 0, head=s == num_stages - 1)
        if dims.cp > 1:
            apply_cp(part, mesh["cp"].get_group())
        stages.append((s, parallelize(part, dims, mesh, cfg)))
    model = Transformer.from_parts([part for _, part in stages])
    # what travels between stages (static shapes: no shape inference at the first step)
    act_dtype = DTYPES[cfg.training.mixed_precision_param] if dims.fsdp_enabled else torch.float32
    bsz, seq, a = cfg.training.local_batch_size, cfg.training.seq_len // dims.cp, model.args  # this rank's tokens
    examples = {
        "tokens": torch.empty(bsz, seq, dtype=torch.long, device="meta"),
        # the residual stream between blocks: sequence-sharded under TP (sequence parallel)
        "residual": torch.empty(bsz, seq // dims.tp, a.dim, dtype=act_dtype, device="meta", requires_grad=True),
        # the last stage's outputs, whole on every tp rank
        "hidden": torch.empty(bsz, seq, a.dim, dtype=act_dtype, device="meta", requires_grad=True),
        "logits": torch.empty(bsz, seq, a.vocab_size, dtype=act_dtype, device="meta", requires_grad=True),
    }
    n_micro = cfg.training.global_batch_size // (cfg.training.local_batch_size * dims.dp)
    cp = None
    if dims.cp > 1:
        cp_mesh = mesh["cp"]
        cp = CPRunner(None, cp_mesh.get_group(), cp_mesh.get_local_rank(), dims.cp, p.cp_balancer, p.cp_chunks_per_rank)
    runner = PipelineRunner(stages, num_stages, pp_mesh.get_group(), p.pp_schedule, n_micro, device, examples, cp)
    return model, runner


