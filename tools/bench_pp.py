"""Pipeline bubble on CPU: the step time of PP=2 against the ideal, per schedule and number
of micro-batches, measured side by side in one run.

    python tools/bench_pp.py [--microbatches 2 4 8] [--seq-len 256] [--rounds 5] [--json out.json]

Two gloo processes (one thread each) run the forward and backward of one step (no optimizer
step) of an 8-layer model (dim 256) through titan_jepa.parallel.pipeline for each schedule:
1F1B and GPipe (one stage of 4 layers per rank), Interleaved1F1B, InterleavedZeroBubble and
ZBVZeroBubble (2 virtual stages of 2 layers per rank). The same step on one process is timed
on rank 0 (the other rank waits), and so is the communication alone: the step's activations
sent forward and their gradients sent back between the two ranks. The ideal PP=2 step is

    ideal = one process / 2 + communication

and the table reports measured / ideal, beside the bubble theory for the 1F1B family,
(M V + pp - 1) / (M V) with V stages per rank. Variants alternate within each round after a
warm-up round; the median is kept. The machine is noisy and small CPU matmuls pipeline
poorly, so only the ratios side by side mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from titan_jepa.config import load_config
from titan_jepa.data.batch import Batch
from titan_jepa.models.llama import ModelArgs, build_model
from titan_jepa.parallel.mesh import ParallelDims, build_mesh
from titan_jepa.parallel.pipeline import build_pipeline


SCHEDULES = {"1F1B": 1, "GPipe": 1, "Interleaved1F1B": 2, "InterleavedZeroBubble": 2, "ZBVZeroBubble": 2}
PP = 2
ARGS = ModelArgs(dim=256, n_layers=8, n_heads=8, n_kv_heads=4, vocab_size=2304, multiple_of=64,
                 ffn_dim_multiplier=None, max_seq_len=2048)
BATCH = 2  # rows per micro-batch


def _batches(m: int, seq: int) -> list[Batch]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(m):
        tokens = torch.randint(0, ARGS.vocab_size, (BATCH, seq), generator=g)
        out.append(Batch(tokens, torch.roll(tokens, -1, 1)))
    return out


def _loss(logits: torch.Tensor, mb: Batch, m: int) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), mb.labels.flatten()) / m


def _variants(rank: int, mesh, microbatches: list[int], seq: int) -> dict:
    steps = {}
    for m in microbatches:
        batches = _batches(m, seq)
        for schedule, v in SCHEDULES.items():
            cfg = load_config(extra={
                "model": {"flavor": "debug"}, "training": {"device": "cpu", "seq_len": seq,
                                                           "local_batch_size": BATCH, "global_batch_size": BATCH * m},
                "parallelism": {"pp": PP, "pp_schedule": schedule, "pp_stages_per_rank": v}})
            model, pipe = build_pipeline(lambda: build_model(ARGS, "meta"), ParallelDims(1, 1, 1, PP, pp=PP),
                                         mesh, cfg, torch.device("cpu"))
            model.to_empty(device="cpu")
            model.init_weights(seed=0)
            pipe.init_buffers("cpu")

            def run(pipe=pipe, model=model, batches=batches, m=m):
                pipe.run(batches, lambda out, mb: (_loss(out.logits, mb, m), None))
                model.zero_grad(set_to_none=True)
            steps[(schedule, m)] = run
        # one process: the whole model, the same micro-batches one after the other (rank 0)
        full = build_model(ARGS, "cpu")
        full.init_weights(seed=0)

        def single(full=full, batches=batches, m=m):
            if rank == 0:
                for mb in batches:
                    _loss(full(mb.tokens).logits, mb, m).backward()
                full.zero_grad(set_to_none=True)
        steps[("one process", m)] = single
        act = torch.zeros(BATCH, seq, ARGS.dim)

        def comm(act=act, m=m):  # activations forward, their gradients back
            for _ in range(m):
                if rank == 0:
                    dist.send(act, 1)
                    dist.recv(act, 1)
                else:
                    dist.recv(act, 0)
                    dist.send(act, 0)
        steps[("communication", m)] = comm
    return steps


def _worker(rank: int, port: int, microbatches: list[int], seq: int, rounds: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=PP)
    mesh, _ = build_mesh(ParallelDims(1, 1, 1, PP, pp=PP), "cpu")
    steps = _variants(rank, mesh, microbatches, seq)
    times = {k: [] for k in steps}
    for r in range(rounds + 1):  # round 0 is the warm-up
        for key, step in steps.items():
            dist.barrier()
            t0 = time.perf_counter()
            step()
            dist.barrier()
            if r:
                times[key].append(time.perf_counter() - t0)
    if rank == 0:
        med = {f"{k[0]}|{k[1]}": statistics.median(v) for k, v in times.items()}
        Path(out).write_text(json.dumps(med))
    dist.barrier()
    dist.destroy_process_group()


def table(med: dict, microbatches: list[int]) -> tuple[str, dict]:
    rows, result = [], {}
    header = f"{'schedule':<24}{'V':>3}" + "".join(f"{f'M={m}':>20}" for m in microbatches)
    rows.append(header)
    rows.append(f"{'':<27}" + "".join(f"{'measured/ideal':>20}" for _ in microbatches))
    for schedule, v in SCHEDULES.items():
        cells = []
        for m in microbatches:
            ideal = med[f"one process|{m}"] / PP + med[f"communication|{m}"]
            ratio = med[f"{schedule}|{m}"] / ideal
            theory = (m * v + PP - 1) / (m * v) if "ZeroBubble" not in schedule else None
            result[f"{schedule}|{m}"] = {"ratio": ratio, "theory": theory, "seconds": med[f"{schedule}|{m}"]}
            cells.append(f"{ratio:.2f}" + (f" (theory {theory:.2f})" if theory else ""))
        rows.append(f"{schedule:<24}{v:>3}" + "".join(f"{c:>20}" for c in cells))
    rows.append("")
    for m in microbatches:
        rows.append(f"M={m}: one process {med[f'one process|{m}'] * 1e3:.0f} ms, communication "
                    f"{med[f'communication|{m}'] * 1e3:.1f} ms, ideal PP=2 "
                    f"{(med[f'one process|{m}'] / PP + med[f'communication|{m}']) * 1e3:.0f} ms")
    return "\n".join(rows), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--microbatches", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    a = ap.parse_args()
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "med.json")
        mp.start_processes(_worker, args=(port, a.microbatches, a.seq_len, a.rounds, out), nprocs=PP,
                           start_method="spawn")
        med = json.loads(Path(out).read_text())
    text, result = table(med, a.microbatches)
    print(text)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
