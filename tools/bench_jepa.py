"""Step time of LLM-JEPA variants as ratios to next-token-only training, measured in one run.

    python tools/bench_jepa.py [--flavor small] [--samples 32] [--seq-len 512] [--rounds 3]
    python tools/bench_jepa.py --hf-folder models/SmolLM2-135M-Instruct --samples 16
        # a real model: its weights, tokenizer and chat template (ChatML); the tokens LLM-JEPA
        # needs are added and the vocabulary grows, as in training

Every variant trains on the same samples per step (forward, backward, AdamW step) with the
same model, on CPU:

  next-token only      the samples packed into rows, no views
  reference style      full / Text / Code as three batch-concatenated groups of rows, each
                       padded to the batch's longest sequence (the reference repository's way)
  packed separate      full, Text+predictor and Code as segments of packed rows (one forward)
  packed shared_prefix predictor tokens read the full sequence's own prefix; Code separate
  jepa_ratio 0.25      packed separate, a quarter of the samples carry views

Variants run interleaved for several rounds after a warm-up and the median is kept; the
machine is noisy, so only the ratios mean anything. Beside each step time: the tokens the
variant runs (padding included) and its real tokens (full sequences and views) over the
next-token variant's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_common import median_step_times, objective_step, objectives_for, packed_batch, train_step  # tools/ is sys.path[0] under python tools/x.py

from titan_jepa.config import load_config
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import ChatSamples
from demo_data import make_demo_data
from titan_jepa.data.sources import BadLines
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.data.views import JepaViews
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.objectives.jepa import jepa_distance_sum

ROOT = Path(__file__).resolve().parents[1]


def load_records(n: int) -> list[dict]:
    shared = ROOT.parent / "shared" / "data" / "llm_jepa" / "synth_train.jsonl"
    if shared.exists():
        path = shared
    else:
        make_demo_data(ROOT / "demo_data", seed=0)
        path = ROOT / "demo_data" / "regex_train.jsonl"
    lines = path.read_text().splitlines()[:n]
    print(f"data: {path} ({len(lines)} samples per step)")
    return [json.loads(line) for line in lines]


def reference_batch(records, cfg, tok):
    """Three groups of rows (full, Text+predictors, Code), right-padded to one length; Enc
    read where our views put it (the token before the end of turn, e.g. the reference's -2
    for Llama-3 and -3 for ChatML)."""
    bad = BadLines("skip")
    views = JepaViews(ChatSamples(tok, "all", 10**6, bad), cfg.jepa, tok, 10**6, 0, 0, bad)
    fulls, texts, codes, labels, pred_at, code_at = [], [], [], [], [], []
    for r in records:
        s = views(r, "bench")
        full, text, code = (seg.ids for seg in s.segments)
        fulls.append(full), labels.append(s.segments[0].labels), texts.append(text), codes.append(code)
        pred_at.append(s.marks["jepa"][0] - len(full))
        code_at.append(s.marks["jepa"][1] - len(full) - len(text))
    seqs = fulls + texts + codes
    width = max(len(x) for x in seqs)
    tokens = torch.full((len(seqs), width), tok.pad_id, dtype=torch.int64)
    for i, x in enumerate(seqs):
        tokens[i, :len(x)] = torch.tensor(x)
    lab = torch.full((len(fulls), width), IGNORE_INDEX, dtype=torch.int64)
    for i, x in enumerate(labels):
        lab[i, :len(x)] = torch.tensor(x)
    return tokens, lab, torch.tensor(pred_at), torch.tensor(code_at), len(records)


def step_reference(model, opt, batch, cfg):
    tokens, labels, pred_at, code_at, n = batch
    logits, hidden = model(tokens)
    ntp = F.cross_entropy(logits[:n].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    idx = torch.arange(n)
    pred, target = hidden[n + idx, pred_at], hidden[2 * n + idx, code_at]
    train_step(opt, ntp + cfg.jepa.lambda_ * jepa_distance_sum(pred, target, cfg.jepa.distance) / n)


def load_grown(folder: str, tok):
    """The folder's model on CPU, its vocabulary grown to hold the tokenizer's added tokens."""
    from titan_jepa.config.model import VOCAB_MULTIPLE
    from titan_jepa.checkpoint.weights import load_hf, read_model_args

    margs = read_model_args("hf", Path(folder))
    if tok.vocab_size > margs.vocab_size:
        margs = replace(margs, vocab_size=-(-tok.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    model = build_model(margs, "meta")
    model.to_empty(device="cpu")
    model.init_buffers("cpu")
    load_hf(model, Path(folder), "--hf-folder", grow=True)
    return model, margs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavor", default="small")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--hf-folder", help="a Hugging Face Llama folder (weights, tokenizer.json, chat template) "
                                        "instead of --flavor at random init and the Llama-3 demo tokenizer")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tokenizer = ({"kind": "hf", "path": str(Path(args.hf_folder) / "tokenizer.json")} if args.hf_folder
                 else {"path": str(ROOT / "assets/tokenizer/tokenizer.model")})
    base = load_config(extra={"tokenizer": tokenizer, "data": {"kind": "chat"},
                              "jepa": {"enable": True, "k": 1, "lambda": 1.0}})
    tok = build_tokenizer(base)  # with the tokens LLM-JEPA needs (added on a non-Llama-3 vocabulary)
    records = load_records(args.samples)
    if args.hf_folder:
        model, margs = load_grown(args.hf_folder, tok)
        args.flavor = args.hf_folder
    else:
        margs = model_args_for(args.flavor, vocab_size=tok.vocab_size, max_seq_len=max(args.seq_len, 2048))
        model = build_model(margs, "meta")
        model.to_empty(device="cpu")
        model.init_weights(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

    ntp_cfg = replace(base, jepa=replace(base.jepa, enable=False))
    shared_cfg = replace(base, jepa=replace(base.jepa, views="shared_prefix"))
    ratio_cfg = replace(base, jepa=replace(base.jepa, jepa_ratio=0.25))
    reference = reference_batch(records, base, tok)
    packed = {  # name: (config, packed batch)
        "next-token only": (ntp_cfg, packed_batch(records, ntp_cfg, tok, args.seq_len, False)),
        "packed separate": (base, packed_batch(records, base, tok, args.seq_len, True)),
        "packed shared_prefix": (shared_cfg, packed_batch(records, shared_cfg, tok, args.seq_len, True)),
        "packed, jepa_ratio 0.25": (ratio_cfg, packed_batch(records, ratio_cfg, tok, args.seq_len, True)),
    }
    steps = {name: (lambda o=objectives_for(cfg), b=batch: objective_step(model, opt, o, b))
             for name, (cfg, batch) in packed.items()}
    steps["reference style (3 padded groups)"] = lambda: step_reference(model, opt, reference, base)
    shapes = {name: tuple(batch.tokens.shape) for name, (_, batch) in packed.items()}
    shapes["reference style (3 padded groups)"] = tuple(reference[0].shape)
    real = {name: batch.counts.full_tokens + batch.counts.view_tokens for name, (_, batch) in packed.items()}
    real["reference style (3 padded groups)"] = real["packed separate"]
    order = ["next-token only", "reference style (3 padded groups)", "packed separate",
             "packed shared_prefix", "packed, jepa_ratio 0.25"]
    print(f"model {args.flavor}: {margs.num_params() / 1e6:.1f}M params; {torch.get_num_threads()} threads")

    times = median_step_times({name: steps[name] for name in order}, args.rounds)
    base_t = times["next-token only"]
    print("\n| variant | tokens per step (rows x len) | real tokens / next-token's | step time (s) | "
          "ratio to next-token |")
    print("|---|---|---|---|---|")
    for name, t in times.items():
        rows, width = shapes[name]
        print(f"| {name} | {rows} x {width} = {rows * width} | {real[name] / real['next-token only']:.2f} | "
              f"{t:.3f} | {t / base_t:.2f}x |")
    sep = times["packed separate"] / base_t
    ref = times["reference style (3 padded groups)"] / base_t
    shp = times["packed shared_prefix"] / base_t
    print(f"\ngoals: packed separate <= 2.0x: {sep:.2f}x ({'met' if sep <= 2.0 else 'NOT met'}); "
          f"faster than the reference style ({ref:.2f}x): {'yes' if sep < ref else 'NO'}; "
          f"shared_prefix <= 1.5x: {shp:.2f}x ({'met' if shp <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
