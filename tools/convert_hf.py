"""Convert model weights between titan_jepa and Hugging Face Llama checkpoints.

Ours -> Hugging Face (a folder LlamaForCausalLM.from_pretrained can read):
    python tools/convert_hf.py --to-hf --src outputs/run/checkpoint/step-1000 --dst hf_out
    python tools/convert_hf.py --to-hf --src model.pt --dst hf_out --config outputs/run/config.toml
    python tools/convert_hf.py --to-hf --src model.pt --dst hf_out --flavor debug --dtype bfloat16

  --src is a torch.distributed.checkpoint (DCP) folder (a training checkpoint, a model-only
  export or a seed checkpoint: read through titan_jepa/checkpoint/weights.py), or a torch.save'd model
  state dict (.pt: keys prefixed ``model.`` or a top-level ``model`` dict). The model shape
  is, in this order: --config (a run's resolved config.toml: its [model] section), --flavor
  (with the vocabulary size read from the weights), or the model_args.json every checkpoint
  and export of a run holds next to its weights; so any shape exports with no option.
  torchtitan DCP folders load in both namings: v0.2.x's (ours: ``attention.wq``, ``output``)
  and the later ``attention.qkv_linear.wq``, ``lm_head`` (titan_jepa/checkpoint/torchtitan_names.py).
  The tokenizer: when --src has the ``tokens.json`` every checkpoint and export of a run
  holds and the run's tokenizer is a Hugging Face tokenizer.json, --dst also gets the
  tokenizer files (tokenizer.json with the tokens the run added, such as <|predictor_1|>
  and <|pad|>; tokenizer_config.json, chat_template.jinja and generation_config.json from
  beside the original), and config.json the bos / eos / pad ids, so transformers'
  AutoTokenizer and AutoModelForCausalLM load --dst as it is.

Hugging Face -> ours (a torch.save'd state dict with our names):
    python tools/convert_hf.py --from-hf --src hf_folder --dst model.pt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


from titan_jepa.checkpoint import hf as hf_convert, torchtitan_names, weights
from titan_jepa.config import ConfigError, load_config
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import FLAVORS, model_args_for
# wrapper prefixes that torch.compile / activation checkpointing / DDP put in parameter names
_WRAPPERS = ("_orig_mod.", "_checkpoint_wrapped_module.", "module.")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def log(msg: str) -> None:
    print(f"[convert_hf] {msg}", flush=True)


def _clean(name: str) -> str:
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def extract_model_state(obj) -> dict[str, torch.Tensor]:
    """Model weights from a loaded checkpoint object (see the module docstring)."""
    if not isinstance(obj, dict):
        fail(f"expected a dict in the checkpoint, found {type(obj).__name__}")
    if isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif any(k.startswith("model.") for k in obj) and not any(k.startswith("layers.") for k in obj):
        obj = {k[len("model."):]: v for k, v in obj.items() if k.startswith("model.")}
    sd = torchtitan_names.rename_to_ours({_clean(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if not sd:
        fail("found no model tensors in the checkpoint")
    if "tok_embeddings.weight" not in sd:
        fail("the checkpoint has no tok_embeddings.weight; is it a titan_jepa model checkpoint?")
    return sd


def load_ours(src: str) -> dict[str, torch.Tensor]:
    if os.path.isdir(src):
        if not os.path.exists(os.path.join(src, ".metadata")):
            fail(f"'{src}' is a folder but not a DCP checkpoint (no .metadata file)")
        log(f"reading DCP checkpoint {src}")
        return extract_model_state(weights.read_dcp_state_dict(Path(src)))
    log(f"reading {src}")
    return extract_model_state(torch.load(src, map_location="cpu", weights_only=True))


def model_args_to_export(a, sd: dict[str, torch.Tensor]):
    """The shape of --src: --config, --flavor or the model_args.json next to the weights."""
    overrides = {k: v for k, v in (("max_seq_len", a.max_seq_len), ("norm_eps", a.norm_eps)) if v is not None}
    if a.config:
        try:
            args = model_args_from_config(load_config(a.config), 0)
        except ConfigError as e:
            fail(str(e))
        rows = int(sd["tok_embeddings.weight"].shape[0])
        if rows > args.vocab_size:  # the run grew the vocabulary (tokens it added)
            args = replace(args, vocab_size=rows)
    elif a.flavor:
        if a.flavor not in FLAVORS:
            fail(f"unknown flavor '{a.flavor}'; choose one of {', '.join(FLAVORS)}")
        vocab = a.vocab_size or int(sd["tok_embeddings.weight"].shape[0])
        if vocab != FLAVORS[a.flavor].vocab_size:
            log(f"vocab_size {vocab} (flavor default {FLAVORS[a.flavor].vocab_size})")
        args = model_args_for(a.flavor, vocab_size=vocab)
    else:
        try:
            args = weights.read_model_args("dcp", Path(a.src)) if os.path.isdir(a.src) else None
        except ConfigError as e:
            fail(str(e))
        if args is None:
            fail(f"'{a.src}' has no {weights.MODEL_ARGS} beside it; pass --config <run>/config.toml "
                 f"(or --flavor) to give the model shape")
        log(f"model shape from {os.path.join(a.src, weights.MODEL_ARGS)}")
    if a.vocab_size:
        overrides["vocab_size"] = a.vocab_size
    return replace(args, **overrides)


def to_hf(a) -> None:
    sd = load_ours(a.src)
    args = model_args_to_export(a, sd)
    if args.tie_embeddings and "output.weight" in sd and not torch.equal(
            sd["output.weight"], sd["tok_embeddings.weight"]):
        fail("the model ties embeddings but output.weight differs from tok_embeddings")
    n_params = sum(t.numel() for k, t in sd.items() if not (args.tie_embeddings and k == "output.weight"))
    tok = export_tokenizer(a.src)
    ids = {"bos_token_id": a.bos_id, "eos_token_id": a.eos_id, "pad_token_id": None}
    if tok is not None:
        stops = sorted(tok.stop_ids)
        ids = {"bos_token_id": tok.bos_id if a.bos_id is None else a.bos_id, "pad_token_id": tok.pad_id,
               "eos_token_id": a.eos_id if a.eos_id is not None else (stops[0] if len(stops) == 1 else stops)}
    log(f"{len(sd)} tensors, {n_params:,} parameters; writing {a.dst} ({a.dtype})")
    try:
        names = hf_convert.save_hf_checkpoint(
            sd, args, a.dst, dtype=DTYPES[a.dtype], max_shard_bytes=int(a.max_shard_gb * 2**30), **ids)
    except (KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    log(f"wrote config.json and {len(names)} safetensors file(s) to {a.dst}")
    if tok is not None:
        files = tok.save_pretrained(a.dst)
        log(f"wrote the tokenizer ({', '.join(files)}; added tokens: "
            f"{', '.join(tok.added_tokens) or 'none'}) to {a.dst}")


def export_tokenizer(src: str):
    """The run's Hugging Face tokenizer with its added tokens, from the tokens.json beside
    --src; None when there is none or the tokenizer is a Llama-3 tokenizer.model."""
    from titan_jepa.data.tokenizer import HFTokenizer, TokenizerError, apply_tokens_record

    record = weights.read_tokens(Path(src)) if os.path.isdir(src) else None
    if record is None:
        log("no tokens.json beside --src: no tokenizer files written (copy the model's own)")
        return None
    if record.get("kind") != "hf":
        log(f"the run's tokenizer is a Llama-3 tokenizer.model ({record.get('path')}): no tokenizer.json "
            f"written (it added no tokens; copy the model's own tokenizer files)")
        return None
    path = Path(record["path"])
    if not path.is_file():
        fail(f"the run's tokenizer '{path}' (from {Path(src) / weights.TOKENS}) does not exist; restore it "
             f"to export the tokenizer files")
    try:
        tok = HFTokenizer(path)
        apply_tokens_record(tok, record)
    except TokenizerError as e:
        fail(str(e))
    return tok


def from_hf(a) -> None:
    if not os.path.isdir(a.src):
        fail(f"--src '{a.src}' is not a Hugging Face checkpoint folder")
    log(f"reading weights from {a.src}")
    try:
        sd, args = weights.read_hf_state_dict(Path(a.src))
    except ConfigError as e:
        fail(str(e))
    match = [n for n, f in FLAVORS.items() if f == args]
    log(f"model args: {args}" + (f" (flavor '{match[0]}')" if match else ""))
    os.makedirs(os.path.dirname(os.path.abspath(a.dst)), exist_ok=True)
    torch.save({k: v.contiguous() for k, v in sd.items()}, a.dst)
    log(f"wrote {len(sd)} tensors to {a.dst}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to-hf", action="store_true", help="ours (.pt or DCP folder) -> HF folder")
    way.add_argument("--from-hf", action="store_true", help="HF folder -> ours (.pt)")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--config", help="--to-hf: the run's config.toml, for the model shape of --src")
    p.add_argument("--flavor", help="--to-hf: model flavor of --src (default: its model_args.json)")
    p.add_argument("--vocab-size", type=int, help="with --flavor, default: rows of tok_embeddings.weight")
    p.add_argument("--max-seq-len", type=int, help="max_position_embeddings (default: the model's)")
    p.add_argument("--norm-eps", type=float, help="default: the model's")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="HF weight dtype")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="safetensors shard size")
    p.add_argument("--bos-id", type=int, help="bos_token_id written to config.json")
    p.add_argument("--eos-id", type=int, help="eos_token_id written to config.json")
    a = p.parse_args(argv)
    if not os.path.exists(a.src):
        fail(f"--src '{a.src}' does not exist")
    t0 = time.time()
    to_hf(a) if a.to_hf else from_hf(a)
    log(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
