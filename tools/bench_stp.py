"""STP step time as a ratio to next-token-only training, measured side by side in one run.

    python tools/bench_stp.py [--flavor small] [--seq-len 512] [--batch 4] [--rounds 5]

Both variants train on the same packed pretraining rows (the demo corpus) with the same
model: forward, backward and an AdamW step. STP reads its spans' hidden states from the
same forward pass, so it adds only a gather and a few vector ops per span. Variants run
interleaved after a warm-up; medians are compared (the machine is noisy).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from bench_common import median_step_times, objective_step, objectives_for  # tools/ is sys.path[0] under python tools/x.py

from titan_jepa.config import load_config
from demo_data import make_demo_data
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.objectives import build_objectives
from titan_jepa.objectives.heads import build_heads

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="small")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spans", type=int, default=4, help="STP spans per document")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus = ROOT / "demo_data" / "corpus.jsonl"
    if not corpus.exists():
        make_demo_data(ROOT / "demo_data", seed=0)
    base = load_config(extra={
        "tokenizer": {"path": str(ROOT / "assets/tokenizer/tokenizer.model")},
        "data": {"kind": "text", "path": str(corpus)},
        "training": {"seq_len": args.seq_len, "local_batch_size": args.batch, "global_batch_size": args.batch},
        "stp": {"enable": True, "spans_per_sample": args.spans, "linear_predictor": True},
    })
    tok = build_tokenizer(base.tokenizer)
    batch = next(build_dataloader(base, tok))  # carries the STP span indices
    margs = model_args_for(args.flavor, vocab_size=tok.vocab_size, max_seq_len=max(args.seq_len, 2048))
    model = build_model(margs, "meta")
    heads = build_heads(build_objectives(base), margs.dim, device="cpu")  # the STP linear predictor
    heads.init_weights(write=lambda p, full: p.copy_(full))
    model.to_empty(device="cpu")
    model.init_weights(0)
    opt = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=1e-4, foreach=True)

    variants = {
        "next-token only": objectives_for(replace(base, stp=replace(base.stp, enable=False))),
        "STP random_span (+ linear predictor)": objectives_for(base, heads),
        "STP curvature": objectives_for(replace(base, stp=replace(base.stp, mode="curvature"))),
    }
    curv_batch = next(build_dataloader(replace(base, stp=replace(base.stp, mode="curvature")), tok))
    times = median_step_times(
        {name: (lambda o=obj, b=curv_batch if "curvature" in name else batch: objective_step(model, opt, o, b))
         for name, obj in variants.items()}, args.rounds)
    n_spans = batch.record("stp").weight.shape[0]
    print(f"model {args.flavor} ({margs.num_params() / 1e6:.1f}M), batch {args.batch} x {args.seq_len}, "
          f"{n_spans} spans, {torch.get_num_threads()} threads")
    base_t = times["next-token only"]
    print("| variant | step time (s) | ratio to next-token |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.3f} | {t / base_t:.3f}x |")
    ratio = times["STP random_span (+ linear predictor)"] / base_t
    print(f"\ngoal: STP <= 1.05x next-token: {ratio:.3f}x ({'met' if ratio <= 1.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
