"""A Hugging Face Llama ``config.json`` <-> our ModelArgs (the model shape of a folder).

``model_args_from_hf_config`` reads transformers 4.x and 5.x layouts (rope_theta and
rope_scaling, or rope_parameters); ``hf_config_dict`` writes a config.json carrying both.
No torch weights here: checkpoint/hf.py converts the tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import torch

from titan_jepa.config.dtypes import DTYPE_NAMES as _DTYPE_NAMES
from titan_jepa.models.llama import FLAVORS, ModelArgs, RopeScaling

CONFIG = "config.json"


def hf_config_dict(args: ModelArgs, dtype: torch.dtype = torch.float32,
                   bos_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                   pad_token_id: int | None = None) -> dict:
    """A LlamaConfig-compatible config.json. Carries both the transformers 4.x keys
    (rope_theta, rope_scaling) and the 5.x key (rope_parameters); they agree."""
    s = args.rope_scaling
    rope_scaling = None if s is None else {
        "rope_type": "llama3",
        "factor": float(s.factor),
        "low_freq_factor": float(s.low_freq_factor),
        "high_freq_factor": float(s.high_freq_factor),
        "original_max_position_embeddings": int(s.original_max_position_embeddings),
    }
    rope_parameters = ({"rope_type": "default"} if rope_scaling is None else dict(rope_scaling))
    rope_parameters["rope_theta"] = float(args.rope_theta)
    dtype_name = _DTYPE_NAMES.get(dtype)
    if dtype_name is None:
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": float(args.rope_theta),
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": bool(args.tie_embeddings),
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def _ffn_fields(dim: int, intermediate_size: int) -> tuple[int, float | None]:
    """(multiple_of, ffn_dim_multiplier) whose ModelArgs.ffn_hidden_dim is exactly
    intermediate_size. Meta's published choices are tried first, then a generic one."""
    def hidden(multiple_of, mult):
        return replace(ModelArgs(), dim=dim, multiple_of=multiple_of,
                       ffn_dim_multiplier=mult).ffn_hidden_dim

    # flavors of the same width first, so e.g. a 3B config maps back to the 3B flavor's fields
    for flavor in sorted(FLAVORS.values(), key=lambda f: f.dim != dim):
        if hidden(flavor.multiple_of, flavor.ffn_dim_multiplier) == intermediate_size:
            return flavor.multiple_of, flavor.ffn_dim_multiplier
    base = int(2 * (4 * dim) / 3)
    mult = None
    target = base
    if intermediate_size < base:
        # int(mult * base) == intermediate_size exactly (the +0.5 absorbs float rounding)
        mult = (intermediate_size + 0.5) / base
        target = int(mult * base)
    # the largest power of two dividing intermediate_size that rounds target up to it
    m = intermediate_size & -intermediate_size
    while m >= 1:
        if m * ((target + m - 1) // m) == intermediate_size:
            break
        m //= 2
    else:
        m = intermediate_size
    if m * ((target + m - 1) // m) != intermediate_size:
        m = intermediate_size
    assert hidden(m, mult) == intermediate_size, (dim, intermediate_size, m, mult)
    return m, mult


def model_args_from_hf_config(cfg: dict, **overrides) -> ModelArgs:
    """ModelArgs from a Llama config.json dict (transformers 4.x or 5.x layout)."""
    if cfg.get("model_type", "llama") != "llama":
        raise ValueError(f"config model_type is '{cfg.get('model_type')}', expected 'llama'")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act '{cfg.get('hidden_act')}' is not supported (only silu)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ValueError("attention_bias / mlp_bias checkpoints are not supported by this model")
    dim, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != dim // n_heads:
        raise ValueError(f"head_dim {head_dim} != hidden_size / num_attention_heads "
                         f"({dim // n_heads}); this model derives head_dim from dim")
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    if rope.get("rope_theta") is not None and cfg.get("rope_theta") is None:
        rope_theta = rope["rope_theta"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope.get(
                "original_max_position_embeddings", cfg["max_position_embeddings"])))
    elif rope_type == "default":
        scaling = None
    else:
        raise ValueError(f"rope_type '{rope_type}' is not supported (only default and llama3)")
    multiple_of, mult = _ffn_fields(dim, int(cfg["intermediate_size"]))
    args = ModelArgs(
        dim=dim,
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        vocab_size=int(cfg["vocab_size"]),
        multiple_of=multiple_of,
        ffn_dim_multiplier=mult,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta),
        rope_scaling=scaling,
        max_seq_len=int(cfg.get("max_position_embeddings", 8192)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )
    return replace(args, **overrides)


def load_hf_config(folder: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(folder), CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CONFIG} in '{folder}'")
    with open(path) as f:
        return json.load(f)
