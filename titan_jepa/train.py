"""The training loop, readable top to bottom.

    torchrun --nproc_per_node=N -m titan_jepa.train --config train_configs/debug_cpu.toml
    python -m titan_jepa.train --config train_configs/debug_cpu.toml --training.steps 10

One optimizer step: every rank takes its micro-batches (one per gradient-accumulation
slot), the number of target tokens is summed over the data-parallel group, each
micro-batch's loss is its sum over targets divided by that global count, gradients are
clipped over the sharded parameters, and the optimizer and schedule step. With pipeline
parallelism (parallelism.pp > 1) each rank builds only its stages and the schedule of
titan_jepa/parallel/pipeline.py runs the micro-batches through them; the objective runs on
the last stage.

Host syncs: a step only queues work on the device. Anything that needs a Python number
from it (the NaN check of the loss, the logged metrics, grad_norm, the same-FLOP milestones,
the SIGTERM agreement between ranks) waits for a *sync step*: a log step (metrics.log_freq),
a checkpoint step, the last step, and every metrics.sync_every steps when that is > 0. There
the global losses and FLOP counts of every step since the last sync come to the host in one
copy (a log step of a JEPA run also all-gathers that step's Pred/Target embeddings for the
collapse diagnostics, objectives/combined.py): a NaN is reported at that step, naming the
step where it first appeared; same-FLOP milestones are found for the steps that passed them,
and their checkpoint is saved at that sync step. The batch counts are made on the CPU by the data pipeline (data/batch.py).

SIGTERM (preemption): the step in progress finishes, every rank agrees to stop after it (at the
next sync step when there are several processes), a checkpoint of that step is saved and the
process exits with code 0 (titan_jepa/preemption.py).
SIGTERM while the loaders skip bad input stops at once, with nothing saved (exit code 0).

Validation (``[validation]``, titan_jepa/validation.py): every validation.freq steps and at
the last step, the same objective without gradients on held-out data (and optionally a
generation eval), logged under ``val/``; ``checkpoint.keep_best`` keeps the best step's
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from titan_jepa.checkpoint import Checkpointer
from titan_jepa.config import ConfigError, JobConfig, config_from_argv, write_config
from titan_jepa.data.loader import build_dataloader, count_batches
from titan_jepa.data.sources import DataInterrupted
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.errors import TrainingError, run_main
from titan_jepa.flops import FLOP_SLICE, SameFlopTracker, training_flops
from titan_jepa.logs import setup_logging
from titan_jepa.models.lora import apply_lora
from titan_jepa.metrics import MetricsLogger
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import build_model
from titan_jepa.objectives.combined import SUMS, Objective
from titan_jepa.objectives.heads import build_heads
from titan_jepa.optim import build_lr_scheduler, build_optimizer
from titan_jepa.parallel.collectives import make_all_gather
from titan_jepa.parallel.loss_parallel import loss_context
from titan_jepa.parallel.mesh import ParallelDims, build_mesh, dp_info, init_distributed
from titan_jepa.parallel.parallelize import clip_grad_norm_, parallelize, parallelize_heads, write_sharded
from titan_jepa.parallel.pipeline import PipelinedModel, build_pipeline
from titan_jepa.preemption import Preemption
from titan_jepa.profiling import StepProfiler
from titan_jepa.validation import Validator

logger = logging.getLogger("titan_jepa")


@dataclass
class TrainHooks:
    """Callbacks a caller injects into the loop (tests: fault injection, sync counting).

    on_step_start(step): at the start of every step, before its batches are read.
    before_checkpoint_rename(step): on rank 0, inside the save of a checkpoint, after all its
        files are written and before step-N.tmp is renamed to step-N.
    """

    on_step_start: Callable[[int], None] | None = None
    before_checkpoint_rename: Callable[[int], None] | None = None


def forward_backward(model, objective: Objective, micro_batches: list, dp, metrics: MetricsLogger,
                     count_flops: bool, pipeline: PipelinedModel | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """Forward and backward over the step's micro-batches; returns the global loss sums (SUMS
    order) and counts (Batch.count_vector order, FLOP counts included) as device tensors,
    and torch's FLOP count of this rank times the world size when ``count_flops``. With
    ``pipeline`` (pp > 1) its schedule runs the micro-batches through the stages and the
    objective runs on the last stage."""
    # each loss term is a sum over its items (target tokens, JEPA samples, STP spans)
    # divided by the number of items summed over the micro-batches and the dp group; the
    # FLOP counts travel in the same all-reduce (the counts were made on the CPU by collate)
    counts = dp.all_reduce_sum(torch.stack([mb.count_vector for mb in micro_batches]).sum(0))
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=counts.device)
    flop_counter = FlopCounterMode(display=False) if count_flops else None
    with flop_counter or contextlib.nullcontext():
        if pipeline is not None:  # pp > 1: the schedule runs the micro-batches through the stages
            def loss_fn(outputs, mb):  # on the last stage, from its (logits, final normed hidden)
                mb_loss, mb_sums = objective(pipeline.outputs(outputs), mb, counts)
                return mb_loss * dp.size, mb_sums  # scaled as below
            with loss_context(model):  # loss parallel under TP (the last stage's logits)
                pipeline.step(micro_batches, loss_fn, sums)
        else:
            for mb in micro_batches:
                with loss_context(model):  # loss parallel under TP: forward and backward inside
                    mb_loss, mb_sums = objective(model, mb, counts)
                    # FSDP averages gradients over the dp ranks; scaling by dp.size makes the
                    # result the gradient of the global loss
                    (mb_loss * dp.size).backward()
                sums += mb_sums
    for mb in micro_batches:
        metrics.count_tokens(mb.tokens.numel())
    counted = None
    if flop_counter is not None:
        # every rank counted its own share (a tp rank a slice of each matmul)
        world = dist.get_world_size() if dist.is_initialized() else 1
        counted = float(flop_counter.get_total_flops()) * world
    return dp.all_reduce_sum(sums), counts, counted


def read_pending(pending: list, step: int, losses: list[float],
                 same_flop: SameFlopTracker) -> tuple[list[int], list[float]]:
    """At sync step ``step``: bring the losses and FLOP counts of the ``pending`` steps to the
    host in one copy, stop at the first non-finite loss, append the losses to ``losses`` and
    feed the same-FLOP tracker. Returns the milestones passed and this step's FLOP counts."""
    values = torch.stack([torch.cat([loss.reshape(1), flops]) for _, loss, flops in pending]).tolist()
    milestones = []
    for (s, _, _), (loss, *flops) in zip(pending, values):
        if not math.isfinite(loss):
            raise TrainingError(f"step {step}: loss is {loss}; lower optimizer.lr, check the data, or keep "
                                f"training.max_norm > 0 (it first appeared at step {s}; the loss is checked "
                                f"at sync steps, see metrics.sync_every)")
        losses.append(loss)
        milestones += same_flop.update(s, flops)
    pending.clear()
    return milestones, flops


def train(cfg: JobConfig, hooks: TrainHooks | None = None) -> list[float]:
    """Run the job described by ``cfg``; returns the global loss of every step it ran."""
    hooks = hooks or TrainHooks()
    # ---- processes, mesh and every check that needs no heavy work ----------------------
    rank, world, device = init_distributed(cfg)
    setup_logging(rank)
    dims = ParallelDims.from_config(cfg, world)
    tokenizer = build_tokenizer(cfg)  # with the tokens the objectives need (tokenizer.add_tokens)
    model_args = model_args_from_config(cfg, tokenizer.vocab_size, len(tokenizer.added_tokens))
    grad_accum = dims.check(cfg, model_args)
    if model_args.attn_backend == "flex" and device.type != "cuda":
        raise ConfigError("model.attn_backend = 'flex' trains on CUDA only (FlexAttention has no "
                          "CPU backward); use 'sdpa' on CPU, it computes the same attention")
    mesh, dp_mesh = build_mesh(dims, device.type)
    dp = dp_info(dp_mesh)
    torch.manual_seed(cfg.job.seed)
    if cfg.job.deterministic:
        # cuBLAS is deterministic only with a fixed workspace; without it the first CUDA matmul
        # raises under use_deterministic_algorithms (read when cuBLAS starts, after this line)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    flop_counter_steps = cfg.metrics.flop_counter_steps
    if model_args.attn_backend == "flex" and flop_counter_steps > 0:
        # under torch's FLOP counter (a dispatch mode) compiled code runs eager, and eager
        # FlexAttention holds a (batch, heads, seq, seq) score tensor: out of memory at 8k
        logger.info("metrics.flop_counter_steps is ignored with model.attn_backend = 'flex' "
                    "(FlexAttention would run unfused under torch's FLOP counter)")
        flop_counter_steps = 0
    if rank == 0:
        write_config(cfg, cfg.run_folder)
    logger.info(f"world {world} on {device.type}: pp {dims.pp} x dp_replicate {dims.dp_replicate} x dp_shard "
                f"{dims.dp_shard} x tp {dims.tp}; gradient accumulation {grad_accum}")

    # ---- data: one loader per batch slot, so data order ignores the layout ------------
    # The global batch is cut into slots of local_batch_size rows; this rank owns slots
    # dp.rank, dp.rank + dp.size, ... (one per micro-batch).
    num_slots = dp.size * grad_accum
    loaders = [build_dataloader(cfg, tokenizer, dp_rank=slot, dp_world=num_slots)
               for slot in range(dp.rank, num_slots, dp.size)]
    if cfg.data.num_epochs > 0:
        # finite data: never step past the end of the slot with the fewest batches
        owned = range(dp.rank, num_slots, dp.size)
        available = int(dp.all_reduce_min(torch.tensor(
            min(count_batches(cfg, tokenizer, slot, num_slots) for slot in owned), device=device)))
        if cfg.training.steps == -1 or cfg.training.steps > available:
            logger.info(f"{cfg.data.num_epochs} epoch(s) of data give {available} steps; training for that many")
            cfg.training.steps = available
            if rank == 0:  # the run folder's config records the steps actually trained
                write_config(cfg, cfg.run_folder)
    # [validation]: its own loaders over validation.path, checked here, before the model
    validator = Validator(cfg, tokenizer, dp, model_args.max_seq_len) if cfg.validation.enable else None

    # ---- model: built on the meta device, parallelised, then materialised ------------
    model = build_model(model_args, device="meta")
    apply_lora(model, cfg.lora)  # [lora]: adapters on the meta model, the rest frozen
    a = model_args
    logger.info(f"model {cfg.model.flavor or 'from [model]'} (dim {a.dim}, {a.n_layers} layers, {a.n_heads}/"
                f"{a.n_kv_heads} heads, vocab {a.vocab_size}): {a.num_params() / 1e6:,.1f}M parameters")
    pipeline = None
    if dims.pp > 1:  # [parallelism] pp: keep this rank's stages, parallelised, and their schedule
        pipeline = build_pipeline(model, dims, mesh, cfg, device)
    else:
        parallelize(model, dims, mesh, cfg)
    # [stp] linear_predictor: the objective's, trained with the model (under pp: on the last stage)
    heads = build_heads(cfg, model_args.dim) if pipeline is None or pipeline.has_last_stage else None
    model.to_empty(device=device)
    model.init_weights(seed=cfg.job.seed, buffer_device=device, write=write_sharded)
    model.train()
    if heads is not None:
        parallelize_heads(heads, dims, mesh, cfg)
        heads.to_empty(device=device)
        heads.init_weights(write=write_sharded)

    optimizer = build_optimizer(model, cfg, device.type, heads)
    scheduler = build_lr_scheduler(optimizer, cfg)
    params = [p for m in (model, heads) if m is not None for p in m.parameters() if p.requires_grad]
    objective = Objective(cfg, heads, gather=make_all_gather(dp.group) if dp.size > 1 else None, rank=dp.rank)
    m = cfg.metrics
    wandb = (dict(project=m.wandb_project, run_name=m.wandb_run_name or cfg.job.name, tags=m.wandb_tags,
                  config=cfg.to_dict()) if m.enable_wandb else None)
    metrics = MetricsLogger(cfg.run_folder, rank, m.enable_tensorboard, m.enable_jsonl,
                            model_args.flops_per_token(cfg.training.seq_len), device, m.gpu_peak_flops,
                            total_steps=cfg.training.steps,
                            tokens_per_step=cfg.training.global_batch_size * cfg.training.seq_len,
                            wandb=wandb, model_parallel_size=dims.tp * dims.pp)

    # ---- checkpoint: resume (model, optimizer, schedule, loaders, RNG) or initial load --
    same_flop = SameFlopTracker(model_args, cfg.checkpoint.interval)
    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, loaders, extra={"same_flop": same_flop},
                                heads=heads, before_rename=hooks.before_checkpoint_rename,
                                tokens=tokenizer.tokens_record())
    done_steps = checkpointer.load()  # the step of the checkpoint resumed from, else 0

    # ---- the loop ----------------------------------------------------------------------
    losses = []
    pending = []  # (step, global loss, global FLOP counts) as device tensors, since the last sync
    preempted = False
    preemption = Preemption(device)  # SIGTERM: stop after the current step with a checkpoint
    for loader in loaders:  # ... or at once when it comes while the data loaders skip bad input
        loader.interrupt_on(lambda: preemption.signalled)
    profiler = StepProfiler(cfg, rank, device, first_step=done_steps + 1)  # [profiling] steps
    for step in range(done_steps + 1, cfg.training.steps + 1):
        if hooks.on_step_start is not None:
            hooks.on_step_start(step)
        try:
            micro_batches = [next(loader).to(device) for loader in loaders]
        except DataInterrupted:  # SIGTERM while the loaders skipped bad input
            preempted = True
            logger.warning(f"preempted (SIGTERM) while loading the data of step {step}: stopped after "
                           f"step {step - 1}; nothing saved (a relaunch resumes from the last checkpoint)")
            break
        log_step = step % cfg.metrics.log_freq == 0 or step == cfg.training.steps
        objective.keep_embeddings = log_step  # JEPA collapse diagnostics: this step's Pred/Target
        sums, counts, flops_counted = forward_backward(model, objective, micro_batches, dp, metrics,
                                                       count_flops=step <= flop_counter_steps,
                                                       pipeline=pipeline)
        if pipeline is not None:  # the norm over every stage
            grad_norm = pipeline.clip_grad_norm_(cfg.training.max_norm, heads)
        else:
            grad_norm = clip_grad_norm_(params, cfg.training.max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        profiler.step(step)
        pending.append((step, objective.loss(sums, counts), counts[FLOP_SLICE]))

        # ---- sync steps: the only place the host reads device numbers ----
        validate = validator is not None and validator.due(step)  # every validation.freq steps and the last
        sync = log_step or validate or checkpointer.due(step) or (
            cfg.metrics.sync_every > 0 and step % cfg.metrics.sync_every == 0)
        last = step == cfg.training.steps
        # one process: the SIGTERM flag is a plain read, checked every step
        stop = not last and (sync or not preemption.collective) and preemption.stop_requested()
        if not (sync or stop):
            continue
        milestones, step_flops = read_pending(pending, step, losses, same_flop)
        if log_step:
            metrics.log(step, {**objective.metrics(sums, counts),
                               **objective.collapse_metrics(),  # {} without JEPA (all-gathers over dp)
                               **({"flops_counted": flops_counted} if flops_counted is not None else {}),
                               "flops": training_flops(model_args, *step_flops[:2]),
                               "flops_vs_ntp": same_flop.ratio,
                               "grad_norm": grad_norm.item(), "lr": scheduler.get_last_lr()[0]})
        if validate:
            val_metrics = metrics.log_val(step, validator.run(model, objective, pipeline))
            checkpointer.note_validation(step, val_metrics)  # checkpoint.keep_best
        checkpointer.maybe_save(step)  # every checkpoint.interval steps and at the last one
        if cfg.checkpoint.same_flop and milestones:
            # this run's FLOPs now equal a next-token run's at these steps (found at this sync step)
            logger.info(f"step {step}: same FLOPs as next-token step(s) {milestones}")
            checkpointer.save(step)
        if stop:  # all ranks agree
            preempted = True
            if cfg.checkpoint.enable:
                checkpointer.save(step)  # a no-op when this step was just saved
                checkpointer.wait()
                logger.info(f"preempted (SIGTERM): stopped after step {step}; checkpoint of step {step} "
                            f"saved, a relaunch resumes from it")
            else:
                logger.warning(f"preempted (SIGTERM): stopped after step {step}; checkpoint.enable is "
                               f"false, so nothing was saved")
            break

    preemption.close()
    profiler.close()
    if preempted:
        checkpointer.wait()  # no model-only export: the run is not finished
        if world > 1:
            dist.barrier()
    else:
        checkpointer.finish(cfg.training.steps)  # waits for async saves; model-only export
    metrics.close()
    final = f", final loss {losses[-1]:.4f}" if losses else " (nothing left to train)"
    if not preempted:
        logger.info(f"done: {cfg.training.steps} steps{final}")
    return losses


def main(argv: list[str] | None = None, hooks: TrainHooks | None = None) -> None:
    # a mistake a user can fix (a UserError) is one line on stderr and exit code 2
    run_main(lambda: train(config_from_argv(argv), hooks), cleanup=_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
