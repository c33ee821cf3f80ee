"""Shared by the step-time benchmarks (bench_jepa.py, bench_stp.py): one training step and
interleaved timing. The machine is noisy, so variants alternate within each round, round 0
is a warm-up, and the median per variant is kept."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def train_step(opt, loss) -> None:
    """Backward of ``loss``, then one optimizer step."""
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def objective_step(model, opt, objective, batch) -> None:
    """One training step of ``objective`` (titan_jepa.objectives.combined.Objective)."""
    loss, _ = objective(model, batch, batch.counts.vector())
    train_step(opt, loss)


def median_step_times(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Seconds per step of each variant: the median over ``rounds`` interleaved rounds,
    after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds + 1):  # round 0 is the warm-up
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if r:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}
