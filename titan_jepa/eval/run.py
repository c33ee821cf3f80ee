"""Evaluate a checkpoint on a chat test set: greedy generation (or next-token letter logits
for hellaswag), scored as the LLM-JEPA paper does, with the reference's bugs fixed.

    python -m titan_jepa.eval --config X.toml --checkpoint CKPT --data test.jsonl \\
        [--scorer auto|exact|startswith|gsm8k|nq_open|hellaswag|spider] [--limit N] \\
        [--batch-size B] [--max-new-tokens 128] [--out results.json] [--sqlite-dir DIR]

CKPT is anything titan_jepa/checkpoint/weights.py reads:
  * a DCP folder (has ``.metadata``): a training checkpoint ``<ckpt>/step-N`` (its "model."
    entries are read, the optimizer is ignored), a model-only export or a seed checkpoint
    (torchtitan-style top-level keys work too). The model shape comes from the
    ``model_args.json`` saved next to the weights, else from ``[model]`` of --config (the
    run's resolved ``<run>/config.toml``). LoRA adapters in the checkpoint are applied (rank
    and targets read from it, alpha from ``[lora]``) and merged; a checkpoint that holds
    adapters alone takes its base weights from ``checkpoint.initial_load_path``;
  * a checkpoint folder holding ``step-N`` folders: the latest complete one;
  * a Hugging Face Llama folder (config.json + *.safetensors): the shape comes from its
    config.json, and the tokenizer from its tokenizer.json when there is one.

The tokenizer: --tokenizer, else --config's [tokenizer], else the one beside the weights
(an HF folder's tokenizer.json, or the tokenizer a run's checkpoint names in its
tokens.json). Tokens a run added (predictors, pad) are never needed to prompt a model, and
are never generated.

Prompts are the model's chat template (``tokenizer.chat_template``: the Llama-3 layout, or
the model's own Jinja template, e.g. SmolLM2's ChatML) over every message before the last
assistant message (system, user), followed by the template's generation prompt; decoding
stops at the model's end-of-turn / eos tokens (``generation_config.json``). The gold answer
is the last assistant message. The results JSON holds the scorer, n, accuracy, extra metrics
and one record per sample (prediction, gold, correct). Runs in one process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from pathlib import Path

import torch

from titan_jepa.config import JobConfig, load_config
from titan_jepa.data.chat_template import generation_prompt
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.errors import EvalError, run_main  # noqa: F401 (EvalError: raised here, imported from here)
from titan_jepa.eval import scorers as S
from titan_jepa.eval.generate import greedy_generate, next_token_logits
from titan_jepa.logs import setup_logging
from titan_jepa.checkpoint.weights import load_model, read_tokens, resolve

logger = logging.getLogger("titan_jepa")


# ---- arguments ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m titan_jepa.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="the training TOML (e.g. <run>/config.toml): model shape, tokenizer, [lora]")
    p.add_argument("--checkpoint", required=True, help="DCP folder, checkpoint folder or HF model folder")
    p.add_argument("--data", required=True, help='a .jsonl of {"messages": [...]} lines')
    p.add_argument("--scorer", default="auto", choices=("auto",) + S.SCORERS)
    p.add_argument("--limit", type=int, default=-1, help="score the first N lines only")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--out", help="results JSON (default: eval_<data name>.json)")
    p.add_argument("--sqlite-dir", help="spider: folder of <db_id>/<db_id>.sqlite for execution accuracy")
    p.add_argument("--tokenizer", help="override tokenizer.path (a .json is read as a HF tokenizer)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ---- data ---------------------------------------------------------------------------------
def read_rows(path: str | Path, limit: int = -1) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"--data '{path}' does not exist")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                msgs = row["messages"]
                if not msgs or msgs[-1]["role"] != "assistant" or not all("content" in m for m in msgs):
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                raise EvalError(f"{path}:{n}: expected {{\"messages\": [..., {{\"role\": \"assistant\", "
                                f"\"content\": gold}}]}}") from None
            rows.append(row)
            if 0 <= limit <= len(rows):
                break
    if not rows:
        raise EvalError(f"--data '{path}' holds no samples")
    return rows


# ---- evaluation ---------------------------------------------------------------------------
class _NoBar:
    def __init__(self, *a, **k):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress(total: int, desc: str, disable: bool):
    if disable:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True)


def _batches(prompts: list[list[int]], batch_size: int):
    """Index batches of similar length (longest first), to pad little."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for i in range(0, len(order), batch_size):
        yield order[i:i + batch_size]


def evaluate(model, tokenizer, rows: list[dict], scorer: str, batch_size: int = 8,
             max_new_tokens: int = 128, sqlite_dir: str | None = None,
             progress: bool = True) -> dict:
    """Score ``rows``; returns the results dict (without file/checkpoint names)."""
    prompts = [generation_prompt(tokenizer, r["messages"]) for r in rows]
    preds: list[str] = [""] * len(rows)
    bar = _progress(len(rows), scorer, not progress)
    if scorer == "hellaswag":
        # the letter as the assistant content is tokenised (its first token)
        letter_ids = [tokenizer.encode(c)[0] for c in S.HELLASWAG_LETTERS]
        for idx in _batches(prompts, batch_size):
            logits = next_token_logits(model, tokenizer, [prompts[i] for i in idx])
            choice = logits[:, letter_ids].argmax(-1).tolist()
            for i, c in zip(idx, choice):
                preds[i] = S.HELLASWAG_LETTERS[c]
            bar.update(len(idx))
    else:
        for idx in _batches(prompts, batch_size):
            outs = greedy_generate(model, tokenizer, [prompts[i] for i in idx], max_new_tokens)
            for i, ids in zip(idx, outs):
                preds[i] = tokenizer.decode(ids)
            bar.update(len(idx))
    bar.close()
    return {**score(rows, preds, scorer, sqlite_dir), "max_new_tokens": max_new_tokens}


def score(rows: list[dict], preds: list[str], scorer: str, sqlite_dir: str | None = None) -> dict:
    """Score predictions against the rows' last assistant messages: scorer, n, correct,
    accuracy, metrics (spider: exact_match, and with ``sqlite_dir`` execution_accuracy,
    which is then the accuracy), predictions (one record per sample)."""
    golds = [r["messages"][-1]["content"] for r in rows]
    records = []
    for i, (row, pred, gold) in enumerate(zip(rows, preds, golds)):
        rec = {"index": i, "prediction": pred, "gold": gold,
               "correct": bool(S.MATCHERS[scorer](pred, gold))}
        records.append(rec)
    metrics = {}
    if scorer == "spider":
        metrics["exact_match"] = sum(r["correct"] for r in records) / len(records)
        if sqlite_dir:
            missing = 0
            for row, rec in zip(rows, records):
                user = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
                db_id = S.spider_db_id(user)
                db = S.find_sqlite(sqlite_dir, db_id) if db_id else None
                rec["db_id"] = db_id
                rec["exact_match"] = rec["correct"]
                if db is None:
                    missing += 1
                    rec["execution"] = False
                else:
                    try:
                        rec["execution"] = S.spider_execution_match(rec["prediction"], rec["gold"], db)
                    except (sqlite3.Error, S.SQLTimeout) as e:  # the gold query fails on its database
                        rec["execution"] = False
                        rec["error"] = f"gold query failed: {e}"
                rec["correct"] = rec["execution"]
            metrics["execution_accuracy"] = sum(r["execution"] for r in records) / len(records)
            metrics["missing_databases"] = missing
            if missing:
                logger.warning(f"{missing} samples have no database under {sqlite_dir}: scored wrong")
    n = len(records)
    correct = sum(r["correct"] for r in records)
    return {"scorer": scorer, "n": n, "correct": correct, "accuracy": correct / n,
            "metrics": metrics, "predictions": records}


def _device_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EvalError("--device cuda: no CUDA device is available; use --device cpu")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    return torch.device(device), DTYPES[dtype]


def run(argv: list[str] | None = None) -> dict:
    from titan_jepa.data.tokenizer import TokenizerError, build_tokenizer

    a = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise EvalError("evaluation runs in one process; launch it with python, not torchrun")
    cfg = load_config(a.config) if a.config else JobConfig()
    if a.tokenizer:
        cfg.tokenizer.path = a.tokenizer
        cfg.tokenizer.kind = "hf" if a.tokenizer.endswith(".json") else "tiktoken"
    elif not a.config:  # the tokenizer beside the weights: an HF folder's, or the run's (tokens.json)
        _, weights_dir = resolve(a.checkpoint)
        record = read_tokens(weights_dir)
        if (weights_dir / "tokenizer.json").is_file():
            cfg.tokenizer.path, cfg.tokenizer.kind = str(weights_dir / "tokenizer.json"), "hf"
        elif record is not None:
            cfg.tokenizer.path, cfg.tokenizer.kind = record["path"], record["kind"]
    scorer = S.resolve_scorer(a.scorer, a.data)
    if a.batch_size <= 0 or a.max_new_tokens <= 0:
        raise EvalError("--batch-size and --max-new-tokens must be positive")
    if a.sqlite_dir and not Path(a.sqlite_dir).is_dir():
        raise EvalError(f"--sqlite-dir '{a.sqlite_dir}' is not a folder")
    rows = read_rows(a.data, a.limit)
    try:
        tokenizer = build_tokenizer(cfg.tokenizer)
    except TokenizerError as e:
        raise EvalError(str(e)) from None
    generation_prompt(tokenizer, rows[0]["messages"])  # a template that cannot prompt: one line, before the model
    device, dtype = _device_dtype(a.device, a.dtype)
    model, source = load_model(cfg, a.checkpoint, tokenizer.vocab_size, device, dtype)
    t0 = time.time()
    results = evaluate(model, tokenizer, rows, scorer, a.batch_size, a.max_new_tokens,
                       a.sqlite_dir, progress=not a.no_progress)
    results = {"data": str(a.data), "checkpoint": source, **results,
               "seconds": round(time.time() - t0, 3)}
    out = Path(a.out or f"eval_{Path(a.data).stem}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    extra = "".join(f", {k} {v:.4f}" if isinstance(v, float) else f", {k} {v}"
                    for k, v in results["metrics"].items())
    print(f"{scorer}: accuracy {results['accuracy']:.4f} ({results['correct']}/{results['n']}){extra}; "
          f"results written to {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    setup_logging(stream=sys.stderr)
    run_main(lambda: run(argv))
