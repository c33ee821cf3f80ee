"""The planner's per-rank memory for a model at long sequence lengths under context
parallelism: one table row per seq_len, one column per cp degree (dp_shard = world / cp, one
row per micro-batch, full activation checkpointing, bf16), each cell the planned GiB per rank
and whether it fits the GPU's usable memory (90 % of it).

    python tools/plan_cp.py                                   # 8B on 8 GPUs, H100 and H200
    python tools/plan_cp.py --config train_configs/llama3_8b_128k_h200.toml --seq 32768 65536
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

from titan_jepa.config import ConfigError, load_config  # noqa: E402
from titan_jepa.plan import GiB, plan  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="train_configs/llama3_8b_128k_h200.toml")
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--seq", type=int, nargs="+", default=[32768, 65536, 131072, 262144])
    ap.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--gpu", nargs="+", default=["H100", "H200"])
    a = ap.parse_args(argv)
    for gpu in a.gpu:
        print(f"\n{gpu}, {a.world_size} GPUs, {a.config}: GiB per rank (fits / DOES NOT FIT)\n")
        print("| seq_len | " + " | ".join(f"cp {c}" for c in a.cp) + " |")
        print("|---|" + "---|" * len(a.cp))
        for seq in a.seq:
            cells = []
            for cp in a.cp:
                cfg = load_config(a.config, extra={"training": {"seq_len": seq, "local_batch_size": 1,
                                                          "global_batch_size": a.world_size // cp},
                                             "model": {"max_seq_len": max(seq, 8192)},
                                             "parallelism": {"cp": cp, "dp_shard": a.world_size // cp}})
                try:
                    p = plan(cfg, a.world_size, 0, gpu)
                except ConfigError as e:
                    cells.append(f"({e})")
                    continue
                mask = f", mask {p.cp_mask_bytes / GiB:.1f}" if cp > 1 else ""
                cells.append(f"{p.total_bytes / GiB:.1f}{mask} {'fits' if p.fits else '**DOES NOT FIT**'}")
            print(f"| {seq:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
