"""torch.profiler traces of chosen steps and, on CUDA, allocator memory snapshots.

    [profiling]
    enable_profiling = true
    profile_steps = [10, 50]       # or leave empty and set start_step / active_steps
    enable_memory_snapshot = true  # CUDA only

The training loop makes one ``StepProfiler`` before its first step and calls
``profiler.step(step)`` after each optimizer step, then ``profiler.close()``. Every rank
writes its own files into the run folder:

* ``<run>/profile_traces/step<N>/rank<R>_trace.json``: a Chrome/Perfetto trace (CPU ops and,
  on CUDA, kernels) of step N: from the end of step N-1's optimizer step (its
  logging and checkpointing included) to the end of step N's optimizer step. Open it in
  https://ui.perfetto.dev or chrome://tracing.
* ``<run>/memory_snapshot/step<N>/rank<R>_memory_snapshot.pickle``: the CUDA caching
  allocator's history up to the end of step N (drag it into https://pytorch.org/memory_viz).
  Off CUDA the snapshot is skipped with a warning, so one config serves CPU smoke tests too.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from titan_jepa.config import JobConfig

logger = logging.getLogger("titan_jepa")

MEMORY_HISTORY_ENTRIES = 100_000


def profiled_steps(cfg: JobConfig) -> set[int]:
    p = cfg.profiling
    if p.profile_steps:
        steps = set(p.profile_steps)
    else:
        steps = set(range(p.start_step, p.start_step + p.active_steps))
    return steps


def _in_run(cfg: JobConfig, folder: str) -> Path:
    path = Path(folder)
    return path if path.is_absolute() else cfg.run_folder / path


class StepProfiler:
    """Profiles the steps chosen in ``[profiling]``; does nothing when profiling is off."""

    def __init__(self, cfg: JobConfig, rank: int, device: torch.device, first_step: int = 1):
        p = cfg.profiling
        self.rank = rank
        self.enabled = p.enable_profiling
        self.steps = profiled_steps(cfg) if self.enabled else set()
        self.trace_dir = _in_run(cfg, p.save_traces_folder)
        self.snapshot_dir = _in_run(cfg, p.save_memory_snapshot_folder)
        self.snapshots = self.enabled and p.enable_memory_snapshot
        self.cuda = device.type == "cuda"
        self._prof = None
        self.written: list[Path] = []
        if self.snapshots and not self.cuda:
            logger.warning("profiling.enable_memory_snapshot: memory snapshots need CUDA; skipped on "
                           f"{device.type}")
            self.snapshots = False
        if self.snapshots:
            torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        if self.enabled:
            logger.info(f"profiling steps {sorted(self.steps)} into {self.trace_dir}")
        self._maybe_start(first_step)

    def _maybe_start(self, step: int) -> None:
        if step not in self.steps:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities, record_shapes=True,
                                            profile_memory=True, with_stack=False)
        self._prof.__enter__()

    def step(self, step: int) -> None:
        """Call after step ``step`` has finished (after the optimizer step)."""
        if not self.enabled:
            return
        if self._prof is not None:
            if self.cuda:
                torch.cuda.synchronize()
            self._prof.__exit__(None, None, None)
            out = self.trace_dir / f"step{step}" / f"rank{self.rank}_trace.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(out))
            self._prof = None
            self.written.append(out)
            if self.rank == 0:
                logger.info(f"profiler trace of step {step}: {out}")
        if self.snapshots and step in self.steps:
            out = self.snapshot_dir / f"step{step}" / f"rank{self.rank}_memory_snapshot.pickle"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "wb") as f:
                pickle.dump(torch.cuda.memory._snapshot(), f)
            self.written.append(out)
        self._maybe_start(step + 1)

    def close(self) -> None:
        if self._prof is not None:  # a chosen step past the end of training
            self._prof.__exit__(None, None, None)
            self._prof = None
        if self.snapshots:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.snapshots = False
