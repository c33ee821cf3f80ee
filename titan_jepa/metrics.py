"""Per-step metrics: one console line, TensorBoard events and a JSONL file in the run folder."""

from __future__ import annotations

import json
import logging
import resource
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


class MetricsLogger:
    """Writes metrics on rank 0 only; every rank may call it."""

    def __init__(self, run_folder: Path, rank: int, tensorboard: bool, jsonl: bool,
                 flops_per_token: float, device: torch.device, peak_flops: float = -1.0):
        self.rank = rank
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
        self._t0 = time.perf_counter()
        self._tokens = 0

    def count_tokens(self, n: int) -> None:
        """Tokens processed on this rank since the last log line."""
        self._tokens += n

    def log(self, step: int, values: dict[str, float]) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        tps = self._tokens / elapsed  # per rank
        mem, mem_unit = memory_gib(self.device)
        row = {"step": step, **values, "tokens_per_s": tps, "memory_gib": mem}
        if self.peak:
            row["mfu"] = 100.0 * tps * self.flops_per_token / self.peak
        self._t0, self._tokens = time.perf_counter(), 0
        if self.rank != 0:
            return row
        parts = [f"step {step:>6}", f"loss {values['loss']:.4f}"]
        for k, v in values.items():
            if k not in ("loss", "lr", "grad_norm"):
                parts.append(f"{k} {v:.4g}")
        parts += [f"grad_norm {values.get('grad_norm', float('nan')):.3f}",
                  f"lr {values.get('lr', 0.0):.3e}", f"tok/s {tps:,.0f}"]
        if "mfu" in row:
            parts.append(f"mfu {row['mfu']:.1f}%")
        parts.append(f"mem {mem:.2f} {mem_unit}")
        logger.info("  ".join(parts))
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(k, v, step)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(row) + "\n")
            self.jsonl.flush()
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
