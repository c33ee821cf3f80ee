"""Shared by the benchmarks (bench_jepa.py, bench_stp.py, gpu_bench.py): one training step,
packed LLM-JEPA batches of a fixed set of samples, and interleaved timing. Machines are
noisy, so variants alternate within each round, round 0 is a warm-up, and the median per
variant is kept."""

from __future__ import annotations

import statistics
import time
from typing import Callable

from dataclasses import replace

from titan_jepa.data.chat import ChatSamples, with_chat_fields
from titan_jepa.data.loader import add_records
from titan_jepa.data.packing import SamplePacker, collate
from titan_jepa.data.sources import BadLines
from titan_jepa.objectives import DataContext, Objectives, build_objectives


def train_step(opt, loss) -> None:
    """Backward of ``loss``, then one optimizer step."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def objectives_for(cfg, heads=None) -> Objectives:
    """The objectives ``cfg`` enables, summed (titan_jepa/objectives), with their ``heads``."""
    return Objectives(build_objectives(cfg), heads)


def objective_loss(model, objective: Objectives, batch):
    """The loss to backpropagate of ``objective`` on one micro-batch that is the whole step:
    the model's one forward, then the objectives."""
    # as LocalRunner without TP: the head on the targets; on the CPU with sdpa, the layers on
    # the tokens that are not padding (train.py's rule)
    unpad = batch.tokens.device.type == "cpu" and getattr(getattr(model, "backend", None), "name", "") == "sdpa"
    outputs = model(batch.tokens, **batch.mask_inputs(), logits_at=batch.targets_at,
                    tokens_at=batch.tokens_at if unpad else None)
    return objective(outputs, batch, batch.count_vector
                     if batch.count_vector is not None else batch.counts.vector()).loss


def objective_step(model, opt, objective, batch) -> None:
    """One training step of ``objective`` on ``batch``."""
    train_step(opt, objective_loss(model, objective, batch))


def packed_batch(records, cfg, tok, seq_len: int, jepa: bool):
    """Every record (a chat sample) packed into as many rows of ``seq_len`` as it takes, with
    its LLM-JEPA views when ``jepa`` (cfg.jepa says which): one Batch holding all of them, so
    every variant of a benchmark trains on the same samples per step."""
    bad = BadLines("skip")
    objectives = build_objectives(cfg) if jepa else build_objectives(replace(cfg, jepa=replace(cfg.jepa, enable=False)))
    ctx = DataContext(cfg, tok, seq_len, 0, 0, bad)
    encode = ChatSamples(tok, "all", seq_len, bad)
    for o in objectives:
        encode = o.wrap_samples(encode, ctx)
    items = iter([encode(r, "bench") for r in records])
    packer = SamplePacker(seq_len, tok.pad_id, lambda: next(items, None), cfg.data.share_prefix)
    rows = list(iter(packer.next_row, None))
    batch = with_chat_fields(collate(rows, len(rows), seq_len, tok.pad_id), rows)
    return add_records(batch, rows, objectives, ctx, 0)


def median_step_times(steps: dict[str, Callable[[], None]], rounds: int,
                      sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Seconds per step of each variant: the median over ``rounds`` interleaved rounds,
    after one warm-up round. ``sync`` (e.g. torch.cuda.synchronize) runs before and after
    each timed step, so asynchronous device work is inside the measurement."""
    sync = sync or (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds + 1):  # round 0 is the warm-up
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_bytes(step: Callable[[], object]) -> int:
    """The most bytes one call of ``step`` holds allocated at once, above its start, from
    torch.profiler's per-op memory records (the CPU has no allocator statistics)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # every op's own allocations less its frees (children excluded), and the frees outside
    # any op ("[memory]"), in start order: the running total's maximum
    now = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        now += e.self_cpu_memory_usage
        peak = max(peak, now)
    return peak
