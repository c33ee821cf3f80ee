"""Per-step metrics: one console line, TensorBoard events, a JSONL file in the run folder and,
optionally, Weights & Biases.

The console line reads ``step 120/1000 (12%)  loss ...  tok/s ...  seen 3.9M tok  eta 14m05s``:
tokens seen are ``step * global_batch_size * seq_len`` (padding included; exact on every
layout and across resumes), the ETA is the mean time per step since the first step this
process logged (its warm-up left out; the first line has no ETA yet), times the steps left.
``metrics.jsonl`` rows carry ``tokens_seen``, ``eta_s`` and ``interval_s`` (the wall seconds since
the previous line, or since the logger started: their sum over a resumed run's rows is its
training time across every invocation).

``tok/s`` (``tokens_per_s``) is per device, as in torchtitan: the tokens of this rank's batch
slot per second, divided by the ranks that share the slot's work (``model_parallel_size`` =
tp x pp). ``mfu`` is that rate times the model's FLOPs per token over the device's peak, so
neither is multiplied by tp or pp.

Validation (``log_val``) writes its own row ``{"step", "val/...": ...}`` to metrics.jsonl, the
same ``val/`` names to TensorBoard and wandb, and one console line.

wandb (``metrics.enable_wandb``, the optional ``wandb`` extra): rank 0 starts one run in
``<run>/wandb`` with ``metrics.wandb_project``, ``wandb_run_name`` (default: job.name) and
``wandb_tags``, the resolved config as the run config, and logs every metrics row at its
step. The run id is kept in ``<run>/wandb_id.txt``, so a resumed job logs into the same run.
``WANDB_MODE=offline`` (wandb's own variable) writes the run files with no network; upload
them later with ``wandb sync``.
"""

from __future__ import annotations

import json
import logging
import resource
import secrets
import time
from pathlib import Path

import torch

logger = logging.getLogger("titan_jepa")

# Dense bf16 peak FLOP/s per GPU (no sparsity), as published by the vendor.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is lower, see below
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
}


def gpu_peak_flops(device_name: str) -> float | None:
    """Look a CUDA device name up in PEAK_FLOPS (the longest matching key wins)."""
    matches = [k for k in PEAK_FLOPS if k.lower() in device_name.lower()]
    if not matches:
        return None
    if "H100" in device_name and "PCIe" in device_name:
        return PEAK_FLOPS["H100 PCIe"]
    return PEAK_FLOPS[max(matches, key=len)]


def memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GiB peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB rss"


def format_duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m, 2d04h."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_count(n: float) -> str:
    """950, 12.3K, 4.56M, 7.89B."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def start_wandb(run_folder: Path, project: str, run_name: str, tags: list[str], config: dict):
    """A wandb run in ``run_folder/wandb`` (the same run again when the folder has one's id)."""
    import wandb

    id_file = run_folder / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    (run_folder / "wandb").mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project, name=run_name, tags=list(tags), config=config,
                      dir=str(run_folder), id=run_id, resume="allow")


class MetricsLogger:
    """Writes metrics on rank 0 only; every rank may call it.

    ``total_steps`` and ``tokens_per_step`` (global) give the progress part of the line;
    ``wandb``: keyword arguments of ``start_wandb`` (project, run_name, tags, config), or None.
    """

    def __init__(self, run_folder: Path, rank: int, tensorboard: bool, jsonl: bool,
                 flops_per_token: float, device: torch.device, peak_flops: float = -1.0,
                 total_steps: int = 0, tokens_per_step: int = 0, wandb: dict | None = None,
                 model_parallel_size: int = 1):
        self.rank = rank
        self.model_parallel_size = model_parallel_size  # ranks that share a batch slot (tp x pp)
        self.total_steps, self.tokens_per_step = total_steps, tokens_per_step
        self._first_log: tuple[int, float] | None = None  # (step, time) of the first log
        self.device = device
        self.flops_per_token = flops_per_token
        self.peak = peak_flops if peak_flops > 0 else None
        if self.peak is None and device.type == "cuda":
            self.peak = gpu_peak_flops(torch.cuda.get_device_name(device))
        self.tb = None
        self.jsonl = None
        if rank == 0:
            run_folder.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_folder / "tb"))
            if jsonl:
                self.jsonl = open(run_folder / "metrics.jsonl", "a")
        self.wandb = start_wandb(run_folder, **wandb) if wandb is not None and rank == 0 else None
        self._t0 = time.perf_counter()
        self._tokens = 0

    def count_tokens(self, n: int) -> None:
        """Tokens processed on this rank since the last log line."""
        self._tokens += n

    def eta_s(self, step: int, now: float) -> float | None:
        """Seconds left at ``step``: the mean time per step since the first step this process
        logged (so its warm-up is left out) times the steps left; None on that first log."""
        if self.total_steps <= 0:
            return None
        if self._first_log is None:
            self._first_log = (step, now)
            return None
        first_step, first_t = self._first_log
        if step <= first_step:
            return None
        return max(self.total_steps - step, 0) * (now - first_t) / (step - first_step)

    def progress(self, step: int, now: float) -> tuple[list[str], dict[str, float]]:
        """The progress part of the console line and its row fields."""
        eta = self.eta_s(step, now)
        parts, row = [], {}
        if self.tokens_per_step > 0:
            row["tokens_seen"] = step * self.tokens_per_step
            parts.append(f"seen {format_count(row['tokens_seen'])} tok")
        if eta is not None:
            row["eta_s"] = eta
            parts.append(f"eta {format_duration(eta)}")
        return parts, row

    def log(self, step: int, values: dict[str, float]) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._t0, 1e-9)
        tps = self._tokens / elapsed / self.model_parallel_size  # per device
        mem, mem_unit = memory_gib(self.device)
        progress, progress_row = self.progress(step, now)
        row = {"step": step, **values, "tokens_per_s": tps, "memory_gib": mem, "interval_s": elapsed, **progress_row}
        if self.peak:
            row["mfu"] = 100.0 * tps * self.flops_per_token / self.peak
        self._t0, self._tokens = now, 0
        if self.rank != 0:
            return row
        if self.total_steps > 0:
            head = f"step {step:>{len(str(self.total_steps))}}/{self.total_steps} ({100 * step // self.total_steps}%)"
        else:
            head = f"step {step:>6}"
        parts = [head, f"loss {values['loss']:.4f}"]
        for k, v in values.items():
            if k not in ("loss", "lr", "grad_norm"):
                parts.append(f"{k} {v:.4g}")
        parts += [f"grad_norm {values.get('grad_norm', float('nan')):.3f}",
                  f"lr {values.get('lr', 0.0):.3e}", f"tok/s {tps:,.0f}"]
        if "mfu" in row:
            parts.append(f"mfu {row['mfu']:.1f}%")
        parts.append(f"mem {mem:.2f} {mem_unit}")
        parts += progress
        logger.info("  ".join(parts))
        self._write(step, row)
        return row

    def log_val(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """Validation metrics (``val/...`` names) of ``step``: a console line and their own row."""
        row = {"step": step, **values}
        if self.rank == 0 and values:
            logger.info(f"validation at step {step}: " + "  ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
            self._write(step, row)
        return row

    def _write(self, step: int, row: dict) -> None:
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
