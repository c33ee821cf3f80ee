"""The training loop, readable top to bottom.

    torchrun --nproc_per_node=N -m titan_jepa.train --config train_configs/debug_cpu.toml
    python -m titan_jepa.train --config train_configs/debug_cpu.toml --training.steps 10

One optimizer step: every rank takes its micro-batches (one per gradient-accumulation
slot), the counts of loss items are summed over the data-parallel group, the runner
(parallel/schedule.py: one forward + backward per micro-batch, or a pipeline schedule) runs
the model on them and the objectives (objectives/) turn its outputs into the loss, gradients
are clipped over the sharded parameters, and the optimizer and schedule step. Host syncs
wait for *sync steps* (log, checkpoint, validation, the last step, metrics.sync_every): the
NaN check, the logged metrics, the same-FLOP milestones and the SIGTERM agreement read device
numbers there only. docs/architecture.md draws the data flow of one step.
"""

from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C while torch and the rest import: one line, exit 130
    from titan_jepa.errors import exit_on_ctrl_c, ignore_signals_while_exiting

    exit_on_ctrl_c()

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
from titan_jepa.checkpoint.weights import check_initial_load
from titan_jepa.checkpoint.contract import make_contract
from titan_jepa.checkpoint.run_folder import own_run_folder
from titan_jepa.config import ConfigError, JobConfig, config_from_argv, write_config
from titan_jepa.data.loader import build_dataloader, count_batches
from titan_jepa.data.sources import DataInterrupted
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.errors import TrainingError, run_main
from titan_jepa.flops import FLOP_SLICE, SameFlopTracker, training_flops
from titan_jepa.logs import setup_logging
from titan_jepa.metrics import MetricsLogger
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import build_model
from titan_jepa.models.lora import apply_lora
from titan_jepa.objectives import Objectives, build_objectives, special_tokens
from titan_jepa.objectives.heads import build_heads
from titan_jepa.optim import build_lr_scheduler, build_optimizer
from titan_jepa.parallel.collectives import make_all_gather, rank_world
from titan_jepa.parallel.mesh import ParallelDims, build_mesh, dp_info, init_distributed
from titan_jepa.parallel.parallelize import (autocast_dtype, clip_grad_norm_, parallelize, parallelize_heads,
                                             write_sharded)
from titan_jepa.parallel.pipeline import build_pipeline
from titan_jepa.parallel.context_parallel import CPRunner, apply_cp
from titan_jepa.parallel.schedule import LocalRunner
from titan_jepa.preemption import Preemption
from titan_jepa.profiling import StepProfiler
from titan_jepa.validation import Validator, check_keep_best

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


def forward_backward(runner, objectives: Objectives, micro_batches: list, dp, keep: bool, count_flops: bool
                     ) -> tuple[torch.Tensor, torch.Tensor, list, float | None]:
    """Forward and backward over the step's micro-batches; returns the global loss sums
    (``objectives.sum_names``) and counts (``objectives.count_names``, FLOP counts included)
    as device tensors, the micro-batches' kept diagnostics (``keep``: a log step), and
    torch's FLOP count of this rank times the world size when ``count_flops``."""
    # each loss term is a sum over its items (target tokens, JEPA samples, STP spans ...)
    # divided by the number of items summed over the micro-batches and the dp group; the
    # FLOP counts travel in the same all-reduce (the counts were made on the CPU by collate)
    counts = dp.all_reduce_sum(torch.stack([mb.count_vector for mb in micro_batches]).sum(0))

    def loss_fn(outputs, mb):
        result = objectives(outputs, mb, counts, keep)
        # FSDP averages gradients over the dp ranks (and the cp ranks, whose losses are parts
        # of one sum); scaling by their number makes the result the gradient of the global loss
        return result.loss * dp.size * getattr(runner, "loss_scale", 1), result

    flop_counter = FlopCounterMode(display=False) if count_flops else None
    with flop_counter or contextlib.nullcontext():
        results = runner.run(micro_batches, loss_fn)
    sums = torch.zeros(len(objectives.sum_names), dtype=torch.float64, device=counts.device)
    for r in results:
        sums += r.sums
    sums = runner.share(sums)  # under pp: from the last stage to every stage's ranks
    counted = None
    if flop_counter is not None:
        # every rank counted its own share (a tp rank a slice of each matmul)
        counted = float(flop_counter.get_total_flops()) * rank_world()[1]
    return dp.all_reduce_sum(sums), counts, [r.kept for r in results], counted


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


@dataclass
class Run:
    """What a run holds once set up: everything the loop reads."""

    cfg: JobConfig
    rank: int
    world: int
    device: torch.device
    dims: ParallelDims
    dp: object  # DPInfo: this rank in the data-parallel group
    model_args: object
    loaders: list
    validator: Validator | None
    model: torch.nn.Module
    runner: object  # LocalRunner or PipelineRunner
    heads: torch.nn.Module | None
    params: list
    objective: Objectives
    gather: Callable | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    metrics: MetricsLogger
    same_flop: SameFlopTracker
    checkpointer: Checkpointer
    flop_counter_steps: int


def setup(cfg: JobConfig, hooks: TrainHooks, objectives: list, rank: int, world: int,
          device: torch.device) -> Run:
    """Every check that needs no heavy work, then the data, the model (built on the meta
    device, parallelised, materialised), the optimizer, metrics and checkpointer."""
    dims = ParallelDims.from_config(cfg, world)
    tokenizer = build_tokenizer(cfg, special_tokens(objectives))  # (tokenizer.add_tokens)
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
    check_keep_best(cfg, objectives)  # a metric this run's validation logs
    check_initial_load(cfg)  # the initial weights exist and are whole
    if rank == 0:
        write_config(cfg, cfg.run_folder)
    cp = f" x cp {dims.cp}" if dims.cp > 1 else ""
    logger.info(f"world {world} on {device.type}: pp {dims.pp} x dp_replicate {dims.dp_replicate} x dp_shard "
                f"{dims.dp_shard}{cp} x tp {dims.tp}; gradient accumulation {grad_accum}")

    # ---- data: one loader per batch slot, so data order ignores the layout ------------
    loaders = build_loaders(cfg, tokenizer, objectives, dp, grad_accum, device, rank)
    if cfg.data.shuffle_buffer <= 0 and cfg.checkpoint.initial_load_path:
        # fine-tuning without dropout draws nothing else from the seed: say so once
        logger.info("data.shuffle_buffer = 0: the samples are read in file order whatever job.seed is; set "
                    "data.shuffle_buffer (e.g. the data set's size) for seeds that change the order")
    # [validation]: its own loaders over validation.path, checked here, before the model
    validator = (Validator(cfg, tokenizer, dp, model_args.max_seq_len, objectives,
                           eval_dp=dp_info(mesh["dp_cp"]) if dims.cp > 1 else None)
                 if cfg.validation.enable else None)

    # ---- model: built on the meta device, parallelised, then materialised ------------
    def make_model():
        model = build_model(model_args, device="meta")
        apply_lora(model, cfg.lora)  # [lora]: adapters on the meta model, the rest frozen
        return model

    a = model_args
    logger.info(f"model {cfg.model.flavor or 'from [model]'} (dim {a.dim}, {a.n_layers} layers, {a.n_heads}/"
                f"{a.n_kv_heads} heads, vocab {a.vocab_size}): {a.num_params() / 1e6:,.1f}M parameters")
    amp = autocast_dtype(dims, cfg)  # mixed precision where FSDP does not apply it (one dp rank)
    if dims.pp > 1:  # [parallelism] pp: this rank's stages, each parallelised like a whole model
        model, runner = build_pipeline(make_model, dims, mesh, cfg, device)
    elif dims.cp > 1:  # [parallelism] cp: each row split over the cp ranks, K/V all-gathered
        model = make_model()
        apply_cp(model, mesh["cp"].get_group())
        model = parallelize(model, dims, mesh, cfg)
        p = cfg.parallelism
        runner = CPRunner(model, mesh["cp"].get_group(), mesh["cp"].get_local_rank(), dims.cp, p.cp_balancer,
                          p.cp_chunks_per_rank)
    else:
        model = parallelize(make_model(), dims, mesh, cfg)
        runner = LocalRunner(model, head_on_targets=dims.tp == 1,
                             drop_padding=device.type == "cpu" and dims.tp == 1 and not cfg.compile.enable
                             and model_args.attn_backend == "sdpa",
                             autocast=amp)
    # the objectives' trainable heads (e.g. STP's linear predictor), on the rank with the model's head
    heads = build_heads(objectives, model_args.dim) if model.output is not None else None
    model.to_empty(device=device)
    model.init_weights(seed=cfg.job.seed, buffer_device=device, write=write_sharded)
    runner.init_buffers(device)
    model.train()
    if heads is not None:
        parallelize_heads(heads, dims, mesh, cfg)
        heads.to_empty(device=device)
        heads.init_weights(write=write_sharded)

    optimizer = build_optimizer(model, cfg, device.type, heads)
    scheduler = build_lr_scheduler(optimizer, cfg)
    params = [p for m in (model, heads) if m is not None for p in m.parameters() if p.requires_grad]
    gather = make_all_gather(dp.group) if dp.size > 1 else None  # InfoNCE's negatives, diagnostics
    gather_rank = dp.rank
    if dims.cp > 1:  # each cp rank holds a block of the samples: the all-gather spans dp x cp
        gather, gather_rank = make_all_gather(mesh["dp_cp"].get_group()), mesh["dp_cp"].get_local_rank()
    m = cfg.metrics
    wandb = (dict(project=m.wandb_project, run_name=m.wandb_run_name or cfg.job.name, tags=m.wandb_tags,
                  config=cfg.to_dict()) if m.enable_wandb else None)
    metrics = MetricsLogger(cfg.run_folder, rank, m.enable_tensorboard, m.enable_jsonl,
                            model_args.flops_per_token(cfg.training.seq_len), device, m.gpu_peak_flops,
                            total_steps=cfg.training.steps,
                            tokens_per_step=cfg.training.global_batch_size * cfg.training.seq_len,
                            wandb=wandb, model_parallel_size=dims.tp * dims.pp * dims.cp)
    same_flop = SameFlopTracker(model_args, cfg.checkpoint.interval)
    tokens = tokenizer.tokens_record()
    template = getattr(tokenizer.hf_chat_template, "source", None)
    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, loaders, extra={"same_flop": same_flop},
                                heads=heads, before_rename=hooks.before_checkpoint_rename, tokens=tokens,
                                contract=make_contract(cfg, model_args, tokens, template))
    return Run(cfg, rank, world, device, dims, dp, model_args, loaders, validator, model, runner, heads, params,
               Objectives(objectives, heads, gather, gather_rank), gather, optimizer, scheduler, metrics, same_flop,
               checkpointer, flop_counter_steps)


def build_loaders(cfg: JobConfig, tokenizer, objectives: list, dp, grad_accum: int, device, rank: int) -> list:
    """This rank's loaders: the global batch is cut into slots of local_batch_size rows and
    this rank owns slots dp.rank, dp.rank + dp.size, ... (one per micro-batch). With finite
    data, ``training.steps`` becomes what the slot with the fewest batches gives."""
    num_slots = dp.size * grad_accum
    owned = range(dp.rank, num_slots, dp.size)
    loaders = [build_dataloader(cfg, tokenizer, dp_rank=slot, dp_world=num_slots, objectives=objectives)
               for slot in owned]
    if cfg.data.num_epochs > 0:
        # finite data: never step past the end of the slot with the fewest batches
        available = int(dp.all_reduce_min(torch.tensor(
            min(count_batches(cfg, tokenizer, slot, num_slots, objectives) for slot in owned), device=device)))
        if cfg.training.steps == -1 or cfg.training.steps > available:
            logger.info(f"{cfg.data.num_epochs} epoch(s) of data give {available} steps; training for that many")
            cfg.training.steps = available
            if rank == 0:  # the run folder's config records the steps actually trained
                write_config(cfg, cfg.run_folder)
    return loaders


def train(cfg: JobConfig, hooks: TrainHooks | None = None, objectives: list | None = None) -> list[float]:
    """Run the job described by ``cfg``; returns the global loss of every step it ran.
    ``objectives``: the objectives to train (objectives/base.py); default those the config
    enables (``build_objectives``)."""
    hooks = hooks or TrainHooks()
    rank, world, device = init_distributed(cfg)
    setup_logging(rank)
    # the run folder is this run's alone: checked and locked before anything in it is touched
    lock = own_run_folder(cfg.run_folder, rank, world)
    try:
        return _train(cfg, hooks, build_objectives(cfg) if objectives is None else objectives, rank, world, device)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: JobConfig, hooks: TrainHooks, objectives: list, rank: int, world: int, device) -> list[float]:
    run = setup(cfg, hooks, objectives, rank, world, device)
    # resume (model, optimizer, schedule, loaders, RNG) or the initial load
    done_steps = run.checkpointer.load()  # the step of the checkpoint resumed from, else 0
    losses, preempted = loop(run, done_steps, hooks)
    if preempted:
        run.checkpointer.wait()  # no model-only export: the run is not finished
        if run.world > 1:
            dist.barrier()
    else:
        run.checkpointer.finish(cfg.training.steps)  # waits for async saves; model-only export
    run.metrics.close()
    if not preempted:
        final = f", final loss {losses[-1]:.4f}" if losses else " (nothing left to train)"
        logger.info(f"done: {cfg.training.steps} steps{final}")
    return losses


def loop(run: Run, done_steps: int, hooks: TrainHooks) -> tuple[list[float], bool]:
    """The steps after ``done_steps``: (the global loss of each, whether SIGTERM stopped it)."""
    cfg, checkpointer, objective = run.cfg, run.checkpointer, run.objective
    losses = []
    pending = []  # (step, global loss, global FLOP counts) as device tensors, since the last sync
    preempted = False
    preemption = Preemption(run.device)  # SIGTERM: stop after the current step with a checkpoint
    for loader in run.loaders:  # ... or at once when it comes while the data loaders skip bad input
        loader.interrupt_on(lambda: preemption.signalled)
    profiler = StepProfiler(cfg, run.rank, run.device, first_step=done_steps + 1)  # [profiling] steps
    for step in range(done_steps + 1, cfg.training.steps + 1):
        if hooks.on_step_start is not None:
            hooks.on_step_start(step)
        try:
            micro_batches = [next(loader).to(run.device) for loader in run.loaders]
        except DataInterrupted:  # SIGTERM while the loaders skipped bad input
            preempted = True
            logger.warning(f"preempted (SIGTERM) while loading the data of step {step}: stopped after "
                           f"step {step - 1}; nothing saved (a relaunch resumes from the last checkpoint)")
            break
        log_step = step % cfg.metrics.log_freq == 0 or step == cfg.training.steps
        sums, counts, kept, flops_counted = forward_backward(
            run.runner, objective, micro_batches, run.dp, keep=log_step, count_flops=step <= run.flop_counter_steps)
        run.metrics.count_tokens(sum(mb.tokens.numel() for mb in micro_batches))
        grad_norm = clip_grad_norm_(run.params, cfg.training.max_norm, run.runner.grad_group)  # all stages' under pp
        lr = run.scheduler.get_last_lr()[0]  # the lr this step uses (logged below)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        profiler.step(step)
        pending.append((step, objective.loss(sums, counts), counts[FLOP_SLICE]))

        # ---- sync steps: the only place the host reads device numbers ----
        validate = run.validator is not None and run.validator.due(step)  # every validation.freq steps, the last
        sync = log_step or validate or checkpointer.due(step) or (
            cfg.metrics.sync_every > 0 and step % cfg.metrics.sync_every == 0)
        last = step == cfg.training.steps
        # one process: the SIGTERM flag is a plain read, checked every step
        stop = not last and (sync or not preemption.collective) and preemption.stop_requested()
        if not (sync or stop):
            continue
        milestones, step_flops = read_pending(pending, step, losses, run.same_flop)
        if log_step:
            run.metrics.log(step, {
                **objective.metrics(sums, counts),
                **objective.diagnostics(kept, run.gather),  # e.g. JEPA's collapse (all-gathers over dp)
                **({"flops_counted": flops_counted} if flops_counted is not None else {}),
                "flops": training_flops(run.model_args, *step_flops[:2]) + objective.head_flops(counts, run.model_args.dim),
                "flops_vs_ntp": run.same_flop.ratio,
                "grad_norm": grad_norm.item(), "lr": lr})
        if validate:
            val_metrics = run.metrics.log_val(step, run.validator.run(run.model, run.runner, objective))
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
    return losses, preempted


def main(argv: list[str] | None = None, hooks: TrainHooks | None = None) -> None:
    # a mistake a user can fix (a UserError) is one line on stderr and exit code 2
    run_main(lambda: train(config_from_argv(argv), hooks), cleanup=_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    finally:
        ignore_signals_while_exiting()
