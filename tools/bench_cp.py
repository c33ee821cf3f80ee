"""Context parallelism on the CPU: the balancers' cost spread, and the model's forward +
backward per rank at cp = 1, 2, 4, measured in one run.

    python tools/bench_cp.py --balance                      # max/mean attention cost, JEPA synth rows
    python tools/bench_cp.py --seq 2048 4096 8192 --cp 1 2 4 # step time, tokens/s, memory per rank

--balance packs LLM-JEPA rows (separate views, k 1) of synth_train.jsonl with the loader's
best-fit packing at each --seq and prints, per cp, the max/mean over the ranks of the
(query, key) pairs their queries may attend to under head-tail and the cost balancer
(parallel/context_parallel.py): 1.00 is perfect balance; the slowest rank sets the pace.

The timing runs the model alone (titan_jepa/models/llama.py with CPAttention, as the
training loop's CPRunner does, without the optimizer and the loader) on one packed row of
--seq tokens of random ids with documents of 256 to 1,024 tokens, cp gloo processes of 1 thread each for cp > 1 and
1 thread for cp = 1, a few rounds after a warm-up: seconds per step (the slowest rank),
tokens/s per rank, the share of the step spent in the K/V all-gathers (forward and the
backward's re-gather), and the peak memory per rank (torch.profiler's allocation records).
On 2 cores, cp = 4 oversubscribes them: read its ratios with that in mind.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # helpers.launch: gloo processes


def balance_report(seqs: list[int], cps: list[int]) -> None:
    from bench_common import packed_batch
    from bench_jepa import load_records
    from titan_jepa.config import load_config
    from titan_jepa.data.tokenizer import build_tokenizer
    from titan_jepa.models.attention import MaskMeta
    from titan_jepa.parallel.context_parallel import balance, cost_balanced, head_tail

    cfg = load_config(extra={"tokenizer": {"path": str(ROOT / "assets/tokenizer/tokenizer.model")},
                             "data": {"kind": "chat"}, "jepa": {"enable": True, "k": 1, "lambda": 1.0}})
    tok = build_tokenizer(cfg)
    print("| seq | rows | cp | head_tail max/mean | cost max/mean |\n|---|---|---|---|---|")
    for seq in seqs:
        batch = packed_batch(load_records(seq // 8), cfg, tok, seq, True)
        meta = MaskMeta(batch.segment_ids, batch.positions, batch.context_segment, batch.context_len)
        for cp in cps:
            ht, cost = balance(meta, head_tail(seq, cp)), balance(meta, cost_balanced(meta, seq, cp))
            print(f"| {seq} | {batch.tokens.shape[0]} | {cp} | {ht:.3f} | {cost:.3f} |")


def _step_times(cfg: dict) -> dict:
    """On each rank: the model under CP on its part of one row; median step time, gather
    time and peak bytes, the maxima over ranks."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from bench_common import peak_bytes
    from titan_jepa.models.attention import MaskMeta
    from titan_jepa.models.llama import build_model, model_args_for
    from titan_jepa.parallel import context_parallel as cpm

    seq, cp = cfg["seq"], cfg["cp"]
    if cp > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if cp > 1 else 0
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    seg, pos, start, i = torch.zeros(1, seq, dtype=torch.int64), torch.zeros(1, seq, dtype=torch.int64), 0, 0
    while start < seq:
        n = min(int(torch.randint(256, 1025, (1,), generator=g)), seq - start)
        seg[0, start:start + n], pos[0, start:start + n] = i, torch.arange(n)
        start, i = start + n, i + 1
    meta = MaskMeta(seg, pos)
    args = model_args_for(cfg["flavor"], max_seq_len=seq)
    tokens = torch.randint(0, args.vocab_size, (1, seq), generator=g)
    model = build_model(args, "cpu")
    model.init_weights(0)
    sh = cpm.shard(meta, seq, cp, cfg["balancer"])
    if cp > 1:
        cpm.apply_cp(model, None)
    gather_s = [0.0]
    original = cpm._gather_seq

    def timed_gather(x, group):
        t0 = time.perf_counter()
        out = original(x, group)
        gather_s[0] += time.perf_counter() - t0
        return out

    cpm._gather_seq = timed_gather

    def step():
        model.zero_grad(set_to_none=True)
        if cp > 1:
            out = model(sh.local(tokens, rank), positions=sh.local(pos, rank), prepared_mask=cpm.cp_mask(meta, sh, rank))
        else:
            out = model(tokens, positions=pos, segment_ids=seg)
        F.cross_entropy(out.logits.flatten(0, 1), sh.local(tokens, rank).flatten() if cp > 1 else tokens.flatten()
                        ).backward()

    step()
    times, gathers = [], []
    for _ in range(cfg["rounds"]):
        if cp > 1:
            dist.barrier()
        gather_s[0] = 0.0
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        gathers.append(gather_s[0])
    peak = peak_bytes(step)
    res = torch.tensor([statistics.median(times), statistics.median(gathers), float(peak)], dtype=torch.float64)
    if cp > 1:
        dist.all_reduce(res, op=dist.ReduceOp.MAX)
    return {"step_s": float(res[0]), "gather_s": float(res[1]), "peak_bytes": float(res[2])}


def timing_report(seqs: list[int], cps: list[int], flavor: str, balancer: str, rounds: int) -> None:
    from helpers import launch

    print(f"model {flavor}, one row, documents of 256-1,024 tokens, balancer {balancer}, medians of {rounds} steps")
    print("| seq | cp | s/step (slowest rank) | tokens/s per rank | vs cp 1 | all-gather share | peak MiB per rank |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seq in seqs:
            base = None
            for cp in cps:
                r = launch(cp, {"seq": seq, "cp": cp, "flavor": flavor, "balancer": balancer, "rounds": rounds},
                           Path(tmp), fn=_step_times)
                base = base or r["step_s"]
                print(f"| {seq} | {cp} | {r['step_s']:.3f} | {seq / cp / r['step_s']:,.0f} | "
                      f"{base / r['step_s']:.2f}x | {100 * r['gather_s'] / r['step_s']:.1f} % | "
                      f"{r['peak_bytes'] / 2**20:,.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--balance", action="store_true", help="the balancers' cost spread only")
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--cp", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--flavor", default="debug")
    ap.add_argument("--balancer", default="head_tail", choices=["head_tail", "cost"])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.balance:
        balance_report(a.seq, [c for c in a.cp if c > 1] or [2, 4])
    else:
        timing_report(a.seq, a.cp, a.flavor, a.balancer, a.rounds)


if __name__ == "__main__":
    main()
