"""Tokenise + pack throughput of one loader process, against what a model consumes.

    python tools/bench_data.py [--seconds 5] [--seq-len 2048] [--batch-size 4]

Runs the real loader (read, parse, tokenise, pack, collate into Batch tensors) on the demo
corpus (generated into a temporary folder) and, when ../shared/data/llm_jepa exists, on its
synth chat data, and prints tokens/s and the ratio to 11,000 tokens/s: the rate at which
an 8B Llama trains on one H200 (so >= 10x leaves the loader far off the critical path).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from titan_jepa.config import JobConfig
from titan_jepa.data.demo import make_demo_data
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]

MODEL_RATE = 11_000  # tokens/s of an 8B model on one H200


def bench(cfg: JobConfig, tok, seconds: float) -> tuple[float, float]:
    """(all tokens/s, non-padding tokens/s) over ``seconds`` of batches."""
    loader = build_dataloader(cfg, tok, 0, 1)
    next(loader)  # warm up (file open, first shuffle fill)
    n = real = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(loader)
        n += b.tokens.numel()
        real += int((b.tokens != tok.pad_id).sum())
    dt = time.perf_counter() - t0
    return n / dt, real / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokenizer", default=str(ROOT / "assets/tokenizer/tokenizer.model"))
    a = p.parse_args()
    cfg = JobConfig()
    cfg.tokenizer.path = a.tokenizer
    cfg.training.seq_len, cfg.training.local_batch_size = a.seq_len, a.batch_size
    tok = build_tokenizer(cfg.tokenizer)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        demo = make_demo_data(tmp, seed=0)
        runs.append(("text: demo corpus", "text", demo / "corpus.jsonl"))
        runs.append(("chat: demo regex", "chat", demo / "regex_train.jsonl"))
        shared = ROOT.parent / "shared/data/llm_jepa/synth_train.jsonl"
        if shared.is_file():
            runs.append(("chat: llm_jepa synth", "chat", shared))
        print(f"tokenizer {a.tokenizer} (vocab {tok.vocab_size}), seq_len {a.seq_len}, batch {a.batch_size}, "
              f"{a.seconds:.0f} s each, one process")
        for name, kind, path in runs:
            cfg.data.kind, cfg.data.path = kind, str(path)
            rate, real = bench(cfg, tok, a.seconds)
            print(f"{name:24s} {rate:12,.0f} tokens/s ({real:12,.0f} non-pad)  "
                  f"= {rate / MODEL_RATE:6.1f}x the 8B-on-H200 rate of {MODEL_RATE:,} tokens/s")


if __name__ == "__main__":
    main()
