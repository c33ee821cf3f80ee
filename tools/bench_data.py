"""Tokenise + pack throughput of one loader process, against what a model consumes; and the
pad fraction of greedy vs best-fit packing.

    python tools/bench_data.py [--seconds 5] [--seq-len 2048] [--batch-size 4]
    python tools/bench_data.py --padding [--config train_configs/repro_synth_small.toml]
                               [--batches 200] [--pack-buffers 0,16,64]

``--padding``: iterates the loader of the config (default repro_synth_small.toml: synth_train,
seq_len 256, 8 rows a batch) over ``--batches`` batches for the next-token arm and the
LLM-JEPA arm with separate views and with shared_prefix, once per ``data.pack_buffer`` value
(0: greedy), and prints pad tokens / all tokens side by side (``--padding-seq-lens 256,1024``:
one table per seq_len).

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
from demo_data import make_demo_data
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


def pad_fraction(cfg: JobConfig, tok, batches: int) -> float:
    """Padding tokens / all tokens over the first ``batches`` batches (fewer at the data's end):
    BatchCounts.pad_tokens: the tokens of no sample and of no view segment."""
    pad = total = 0
    for _, b in zip(range(batches), build_dataloader(cfg, tok, 0, 1)):
        total += b.tokens.numel()
        pad += b.counts.pad_tokens
    return pad / max(total, 1)


def padding_table(config: str, batches: int, buffers: list[int], seq_len: int | None) -> None:
    from titan_jepa.config import load_config
    arms = [("next-token", None), ("jepa separate", "separate"), ("jepa shared_prefix", "shared_prefix")]
    print(f"pad fraction over {batches} batches of {config}" + (f" at seq_len {seq_len}" if seq_len else "") +
          "; data.pack_buffer = " + ", ".join(str(b) for b in buffers) + " (0: greedy)")
    header = f"{'arm':20s} " + " ".join(f"{'greedy' if b <= 1 else f'best-fit {b}':>13s}" for b in buffers)
    print(header)
    tok = None
    for name, views in arms:
        fracs = []
        for buf in buffers:
            cfg = load_config(config, [])
            cfg.jepa.enable = views is not None
            if views:
                cfg.jepa.views = views
            cfg.data.pack_buffer = buf
            if seq_len:
                cfg.training.seq_len = seq_len
            tok = tok or build_tokenizer(cfg.tokenizer)
            fracs.append(pad_fraction(cfg, tok, batches))
        print(f"{name:20s} " + " ".join(f"{100 * f:12.1f}%" for f in fracs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--tokenizer", default=str(ROOT / "assets/tokenizer/tokenizer.model"))
    p.add_argument("--padding", action="store_true", help="the pad-fraction table instead of throughput")
    p.add_argument("--config", default=str(ROOT / "train_configs/repro_synth_small.toml"))
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--pack-buffers", default="0,16,64")
    p.add_argument("--padding-seq-lens", default="", help="--padding: seq_lens to tabulate (default: the config's)")
    a = p.parse_args()
    if a.padding:
        for seq_len in [int(x) for x in a.padding_seq_lens.split(",") if x] or [None]:
            padding_table(a.config, a.batches, [int(x) for x in a.pack_buffers.split(",")], seq_len)
        return
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
