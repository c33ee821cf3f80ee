"""The model shape of a run: ``[model]`` of the config resolved onto its flavor.

    [model]
    flavor = "debug"          # the base: titan_jepa.models.llama.FLAVORS (unset: the
                              # config.json of an hf initial_load_path, else "debug")
    dim = 96                  # any field set overrides the flavor's
    n_heads = 6
    n_kv_heads = 2
    rope_scaling = "llama3"   # "none" | "llama3"; with rope_factor, rope_low_freq_factor,
    rope_original_max_seq_len = 64   # rope_high_freq_factor, rope_original_max_seq_len
    tie_embeddings = true

The combination is checked here (dim % n_heads, n_heads % n_kv_heads, ...), with one-line
ConfigErrors, before any model is built. The vocabulary grows when the tokenizer appended
tokens the method needs (``tokenizer.add_tokens``, data/tokenizer.py): to the tokenizer's
size rounded up to a multiple of 64 (``VOCAB_MULTIPLE``: any tensor-parallel degree divides
it, and GPU matmuls like it), unless ``model.vocab_size`` is set. Training, the planner, the seed checkpoint, the
eval and tools/convert_hf.py --config all resolve the shape through this one function.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import titan_jepa.config.hf_config as hf_convert
from titan_jepa.config.sections import JobConfig
from titan_jepa.errors import ConfigError
from titan_jepa.models.llama import FLAVORS, ModelArgs, RopeScaling, model_args_for

# [model] fields that override the ModelArgs field of the same name (-1: keep the flavor's)
_SAME_NAME = ("vocab_size", "max_seq_len", "norm_eps", "dim", "n_layers", "n_heads", "n_kv_heads",
              "multiple_of", "rope_theta")
# [model] rope_* field -> RopeScaling field
_ROPE = {"rope_factor": "factor", "rope_low_freq_factor": "low_freq_factor",
         "rope_high_freq_factor": "high_freq_factor",
         "rope_original_max_seq_len": "original_max_position_embeddings"}


def _base(cfg: JobConfig) -> tuple[ModelArgs, str]:
    """(the shape the [model] fields override, what it is): model.flavor; unset, the
    Hugging Face config.json the run starts from, else the debug flavor."""
    m, ck = cfg.model, cfg.checkpoint
    if m.flavor:
        if m.flavor not in FLAVORS:
            raise ConfigError(f"model.flavor: unknown model flavor '{m.flavor}'; choose one of "
                              f"{', '.join(FLAVORS)} (and set model.dim, model.n_heads, ... for another shape)")
        return model_args_for(m.flavor), f"flavor '{m.flavor}'"
    if ck.initial_load_path and ck.initial_load_format == "hf":
        path = Path(ck.initial_load_path)
        try:
            return hf_convert.model_args_from_hf_config(hf_convert.load_hf_config(path)), f"'{path / 'config.json'}'"
        except (OSError, KeyError, ValueError) as e:
            raise ConfigError(f"checkpoint.initial_load_path '{path}': cannot read the model shape from its "
                              f"config.json ({e}); point it at a Hugging Face Llama folder or set model.flavor") from None
    return model_args_for("debug"), "flavor 'debug'"


VOCAB_MULTIPLE = 64


def model_args_from_config(cfg: JobConfig, vocab_size: int, added_tokens: int = 0) -> ModelArgs:
    """ModelArgs of ``cfg.model`` (flavor + overrides), checked; ``vocab_size`` is the
    tokenizer's (0: unknown), which the model's vocabulary must hold; ``added_tokens`` of them
    were appended by this stack, and the vocabulary grows to hold those (see above)."""
    m = cfg.model
    args, base = _base(cfg)
    if added_tokens and m.vocab_size == -1 and vocab_size - added_tokens <= args.vocab_size < vocab_size:
        args = replace(args, vocab_size=-(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE)
    args = replace(args, attn_backend=m.attn_backend)
    overrides = {k: getattr(m, k) for k in _SAME_NAME if getattr(m, k) != -1}
    if m.ffn_dim_multiplier != -1:
        overrides["ffn_dim_multiplier"] = None if m.ffn_dim_multiplier == 0 else m.ffn_dim_multiplier
    if m.tie_embeddings is not None:
        overrides["tie_embeddings"] = m.tie_embeddings
    rope_set = {f: getattr(m, k) for k, f in _ROPE.items() if getattr(m, k) != -1}
    scaling = args.rope_scaling
    if m.rope_scaling == "none":
        if rope_set:
            raise ConfigError(f"model.rope_scaling = 'none' but model.{next(k for k, f in _ROPE.items() if f in rope_set)} "
                              f"is set; set model.rope_scaling = 'llama3' or drop the rope_* fields")
        scaling = None
    elif m.rope_scaling == "llama3" or rope_set:
        if scaling is None and m.rope_scaling != "llama3":
            raise ConfigError(f"model.{next(k for k, f in _ROPE.items() if f in rope_set)} is set but {base} "
                              f"has no RoPE scaling; also set model.rope_scaling = 'llama3'")
        scaling = replace(scaling or RopeScaling(), **rope_set)
    overrides["rope_scaling"] = scaling
    args = replace(args, **overrides)
    try:
        args.check()
    except ValueError as e:
        raise ConfigError(f"[model] {e}") from None
    if vocab_size > args.vocab_size:
        raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model's vocab_size is "
                          f"{args.vocab_size}; set model.vocab_size >= {vocab_size}")
    return args

