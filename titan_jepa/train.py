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

SIGTERM (preemption): the step in progress finishes, every rank agrees to stop after it,
a checkpoint of that step is saved and the process exits with code 0 (titan_jepa/preemption.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from titan_jepa.checkpoint import Checkpointer
from titan_jepa.config import ConfigError, JobConfig, config_from_argv, write_config
from titan_jepa.data.loader import build_dataloader, count_batches
from titan_jepa.data.sources import DataError
from titan_jepa.data.tokenizer import TokenizerError, build_tokenizer
from titan_jepa.flops import SameFlopTracker, flop_counts, training_flops
from titan_jepa.lora import apply_lora
from titan_jepa.metrics import MetricsLogger
from titan_jepa.models.llama import ModelArgs, build_model, model_args_for
from titan_jepa.objectives.combined import SUMS, Objective
from titan_jepa.objectives.stp import attach_predictor, init_predictor
from titan_jepa.optim import build_lr_scheduler, build_optimizer
from titan_jepa.parallel.collectives import make_all_gather
from titan_jepa.parallel.mesh import ParallelDims, build_mesh, dp_info, init_distributed
from titan_jepa.parallel.parallelize import clip_grad_norm_, parallelize, write_sharded
from titan_jepa.parallel.pipeline import PipelinedModel, build_pipeline
from titan_jepa.preemption import Preemption, maybe_kill_for_test
from titan_jepa.profiling import StepProfiler

logger = logging.getLogger("titan_jepa")


class TrainingError(RuntimeError):
    """The run cannot go on (a NaN loss, for example); the message says what to change."""


def model_args_from_config(cfg: JobConfig, vocab_size: int) -> ModelArgs:
    m = cfg.model
    try:
        args = model_args_for(m.flavor, attn_backend=m.attn_backend,
                              vocab_size=m.vocab_size if m.vocab_size > 0 else None,
                              max_seq_len=m.max_seq_len if m.max_seq_len > 0 else None,
                              norm_eps=m.norm_eps if m.norm_eps > 0 else None)
    except ValueError as e:
        raise ConfigError(f"model.flavor: {e}") from None
    if vocab_size > args.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model's vocab_size is "
                          f"{args.vocab_size}; set model.vocab_size >= {vocab_size}")
    return args


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[titan_jepa %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout, force=True)


def forward_backward(model, objective: Objective, micro_batches: list, dp, metrics: MetricsLogger,
                     count_flops: bool, pipeline: PipelinedModel | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Forward and backward over the step's micro-batches; returns the global step metrics
    and the global FLOP counts (see flops.py). With ``pipeline`` (pp > 1) its schedule runs
    the micro-batches through the stages and the objective runs on the last stage."""
    device = micro_batches[0].tokens.device
    # each loss term is a sum over its items (target tokens, JEPA samples, STP spans)
    # divided by the number of items summed over the micro-batches and the dp group; the
    # FLOP counts depend on the batches alone, so they travel in the same all-reduce
    local_counts = torch.stack([objective.counts(mb) for mb in micro_batches]).sum(0)
    local_flops = torch.stack([flop_counts(mb) for mb in micro_batches]).sum(0).to(device)
    counts, flops = dp.all_reduce_sum(torch.cat([local_counts, local_flops])).split(
        [local_counts.numel(), local_flops.numel()])
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    flop_counter = FlopCounterMode(display=False) if count_flops else None
    with flop_counter or contextlib.nullcontext():
        if pipeline is not None:  # pp > 1: the schedule runs the micro-batches through the stages
            def loss_fn(outputs, mb):  # on the last stage, from its (logits, final normed hidden)
                mb_loss, mb_sums = objective(pipeline.outputs(outputs), mb, counts)
                return mb_loss * dp.size, mb_sums  # scaled as below
            pipeline.step(micro_batches, loss_fn, sums)
        else:
            for mb in micro_batches:
                mb_loss, mb_sums = objective(model, mb, counts)
                # FSDP averages gradients over the dp ranks; scaling by dp.size makes the
                # result the gradient of the global loss
                (mb_loss * dp.size).backward()
                sums += mb_sums
    for mb in micro_batches:
        metrics.count_tokens(mb.tokens.numel())
    step_metrics = objective.metrics(dp.all_reduce_sum(sums), counts)
    if flop_counter is not None:
        # every rank counted its own share (a tp rank a slice of each matmul)
        world = dist.get_world_size() if dist.is_initialized() else 1
        step_metrics["flops_counted"] = float(flop_counter.get_total_flops()) * world
    return step_metrics, flops.cpu()


def train(cfg: JobConfig) -> list[float]:
    """Run the job described by ``cfg``; returns the global loss of every step."""
    # ---- processes, mesh and every check that needs no heavy work ----------------------
    rank, world, device = init_distributed(cfg)
    setup_logging(rank)
    dims = ParallelDims.from_config(cfg, world)
    tokenizer = build_tokenizer(cfg.tokenizer)
    model_args = model_args_from_config(cfg, tokenizer.vocab_size)
    grad_accum = dims.check(cfg, model_args)
    if model_args.attn_backend == "flex" and device.type != "cuda":
        raise ConfigError("model.attn_backend = 'flex' trains on CUDA only (FlexAttention has no "
                          "CPU backward); use 'sdpa' on CPU, it computes the same attention")
    mesh, dp_mesh = build_mesh(dims, device.type)
    dp = dp_info(dp_mesh)
    torch.manual_seed(cfg.job.seed)
    if cfg.job.deterministic:
        torch.use_deterministic_algorithms(True)
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

    # ---- model: built on the meta device, parallelised, then materialised ------------
    model = build_model(model_args, device="meta")
    apply_lora(model, cfg.lora)  # [lora]: adapters on the meta model, the rest frozen
    if cfg.stp.enable and cfg.stp.linear_predictor:
        attach_predictor(model, model_args.dim)  # [stp]: trained with the model
    logger.info(f"model {cfg.model.flavor}: {model_args.num_params() / 1e6:,.1f}M parameters")
    pipeline = None
    if dims.pp > 1:  # [parallelism] pp: keep this rank's stages, parallelised, and their schedule
        pipeline = build_pipeline(model, dims, mesh, cfg, device)
    else:
        parallelize(model, dims, mesh, cfg)
    model.to_empty(device=device)
    model.init_weights(seed=cfg.job.seed, buffer_device=device, write=write_sharded)
    init_predictor(model, write=write_sharded)
    model.train()

    optimizer = build_optimizer(model, cfg, device.type)
    scheduler = build_lr_scheduler(optimizer, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    objective = Objective(cfg, gather=make_all_gather(dp.group) if dp.size > 1 else None, rank=dp.rank)
    metrics = MetricsLogger(cfg.run_folder, rank, cfg.metrics.enable_tensorboard,
                            cfg.metrics.enable_jsonl, model_args.flops_per_token(cfg.training.seq_len),
                            device, cfg.metrics.gpu_peak_flops)

    # ---- checkpoint: resume (model, optimizer, schedule, loaders, RNG) or initial load --
    same_flop = SameFlopTracker(model_args, cfg.checkpoint.interval)
    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, loaders, extra={"same_flop": same_flop})
    done_steps = checkpointer.load()  # the step of the checkpoint resumed from, else 0

    # ---- the loop ----------------------------------------------------------------------
    losses = []
    preempted = False
    preemption = Preemption(device)  # SIGTERM: stop after the current step with a checkpoint
    profiler = StepProfiler(cfg, rank, device, first_step=done_steps + 1)  # [profiling] steps
    for step in range(done_steps + 1, cfg.training.steps + 1):
        maybe_kill_for_test(step, rank, world)  # TITAN_JEPA_TEST_KILL_AT_STEP (tests only)
        micro_batches = [next(loader).to(device) for loader in loaders]
        step_metrics, flops = forward_backward(model, objective, micro_batches, dp, metrics,
                                               count_flops=step <= cfg.metrics.flop_counter_steps,
                                               pipeline=pipeline)
        loss = step_metrics["loss"]
        if not math.isfinite(loss):
            raise TrainingError(f"step {step}: loss is {loss}; lower optimizer.lr, check "
                                f"the data, or keep training.max_norm > 0")
        if pipeline is not None:  # the norm over every stage
            grad_norm = pipeline.clip_grad_norm_(cfg.training.max_norm)
        else:
            grad_norm = clip_grad_norm_(params, cfg.training.max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        profiler.step(step)

        losses.append(loss)
        same_flop_milestones = same_flop.update(step, flops)
        if step % cfg.metrics.log_freq == 0 or step == cfg.training.steps:
            metrics.log(step, {**step_metrics, "flops": training_flops(model_args, *flops[:2].tolist()),
                               "flops_vs_ntp": same_flop.ratio,
                               "grad_norm": grad_norm.item(), "lr": scheduler.get_last_lr()[0]})
        checkpointer.maybe_save(step)  # every checkpoint.interval steps and at the last one
        if cfg.jepa.same_flop and same_flop_milestones:
            # this run's FLOPs now equal a next-token run's at these steps
            logger.info(f"step {step}: same FLOPs as next-token step(s) {same_flop_milestones}")
            checkpointer.save(step)
        if step < cfg.training.steps and preemption.stop_requested():  # collective: all ranks agree
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


def main(argv: list[str] | None = None) -> None:
    try:
        cfg = config_from_argv(argv)
        train(cfg)
    except (ConfigError, DataError, TokenizerError, TrainingError) as e:
        # one clear line, not a traceback, for mistakes a user can fix
        print(f"error: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(2)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
