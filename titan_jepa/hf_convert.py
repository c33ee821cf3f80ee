"""Conversion between our (torchtitan llama3) state dicts and Hugging Face Llama checkpoints.

Names:
    tok_embeddings.weight                  <-> model.embed_tokens.weight
    layers.N.attention.w{q,k,v,o}.weight   <-> model.layers.N.self_attn.{q,k,v,o}_proj.weight
    layers.N.feed_forward.w1/w3/w2.weight  <-> model.layers.N.mlp.gate/up/down_proj.weight
    layers.N.attention_norm.weight         <-> model.layers.N.input_layernorm.weight
    layers.N.ffn_norm.weight               <-> model.layers.N.post_attention_layernorm.weight
    norm.weight                            <-> model.norm.weight
    output.weight                          <-> lm_head.weight (absent in HF when tied)

Our RoPE rotates interleaved pairs (x[2i], x[2i+1]) (Meta / torchtitan), Hugging Face's rotates
halves (x[i], x[i + D/2]), so the rows of wq and wk are permuted within each head on the way
(the same permutation as transformers' convert_llama_weights_to_hf.py).

This module needs only torch and safetensors (no transformers), and works on state dicts of
plain, full tensors: gather DTensor / FSDP shards before calling it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace

import torch

from titan_jepa.models.llama import FLAVORS, ModelArgs, RopeScaling

_LAYER_MAP = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LAYER_MAP_INV = {v: k for k, v in _LAYER_MAP.items()}
_TOP_MAP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_TOP_MAP_INV = {v: k for k, v in _TOP_MAP.items()}
_OURS_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# buffers some transformers versions put in the state dict; not weights
_HF_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


# ---- q/k permutation -----------------------------------------------------------------------
def _interleaved_to_halves(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q/k projection: Meta interleaved pairs -> HF rotate_half layout."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _halves_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of _interleaved_to_halves."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _check_shape(name: str, t: torch.Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"'{name}' has shape {tuple(t.shape)} but the model args expect "
                         f"{tuple(expected)}; check the model shape ([model] of the config, or model_args.json)")


def _expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    d, hd, f = args.dim, args.head_dim, args.ffn_hidden_dim
    per_layer = {
        "attention.wq.weight": (args.n_heads * hd, d),
        "attention.wk.weight": (args.n_kv_heads * hd, d),
        "attention.wv.weight": (args.n_kv_heads * hd, d),
        "attention.wo.weight": (d, args.n_heads * hd),
        "feed_forward.w1.weight": (f, d),
        "feed_forward.w3.weight": (f, d),
        "feed_forward.w2.weight": (d, f),
        "attention_norm.weight": (d,),
        "ffn_norm.weight": (d,),
    }
    shapes = {f"layers.{i}.{k}": v for i in range(args.n_layers) for k, v in per_layer.items()}
    shapes["tok_embeddings.weight"] = (args.vocab_size, d)
    shapes["norm.weight"] = (d,)
    shapes["output.weight"] = (args.vocab_size, d)
    return shapes


def _check_complete(sd: dict, args: ModelArgs, what: str, with_output: bool = True) -> None:
    expected = _expected_shapes(args)
    if not with_output:
        expected.pop("output.weight")
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        raise KeyError(f"{what} does not match the model args: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                       f"{'...' if len(extra) > 5 else ''}")
    for k, shape in expected.items():
        _check_shape(k, sd[k], shape)


# ---- state dicts ---------------------------------------------------------------------------
def to_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our names -> HF LlamaForCausalLM names (q/k rows permuted). With tied embeddings the
    HF dict has no lm_head.weight (transformers ties it on load)."""
    sd = dict(sd)
    if args.tie_embeddings:
        out_w, emb = sd.pop("output.weight", None), sd.get("tok_embeddings.weight")
        if out_w is not None and emb is not None and out_w is not emb and not torch.equal(out_w, emb):
            raise ValueError("tie_embeddings is set but output.weight differs from "
                             "tok_embeddings.weight (were the weights untied, e.g. by to_empty()?)")
    _check_complete(sd, args, "model state dict", with_output=not args.tie_embeddings)
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        m = _OURS_LAYER.match(name)
        if m is None:
            out[_TOP_MAP[name]] = t
            continue
        layer, rest = m.groups()
        if rest == "attention.wq.weight":
            t = _interleaved_to_halves(t, args.n_heads)
        elif rest == "attention.wk.weight":
            t = _interleaved_to_halves(t, args.n_kv_heads)
        out[f"model.layers.{layer}.{_LAYER_MAP[rest]}"] = t
    return out


def from_hf_state_dict(hf_sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM names -> ours. With tied embeddings output.weight is the embedding
    tensor itself (so ``Transformer.load_state_dict`` works in strict mode)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in hf_sd.items():
        if _HF_IGNORED.search(name):
            continue
        m = _HF_LAYER.match(name)
        if m is None:
            if name not in _TOP_MAP_INV:
                raise KeyError(f"unexpected Hugging Face weight '{name}' (not a Llama weight)")
            out[_TOP_MAP_INV[name]] = t
            continue
        layer, rest = m.groups()
        if rest not in _LAYER_MAP_INV:
            raise KeyError(f"unexpected Hugging Face weight '{name}' (biases and other extras "
                           "are not supported by this Llama model)")
        ours = _LAYER_MAP_INV[rest]
        if ours == "attention.wq.weight":
            t = _halves_to_interleaved(t, args.n_heads)
        elif ours == "attention.wk.weight":
            t = _halves_to_interleaved(t, args.n_kv_heads)
        out[f"layers.{layer}.{ours}"] = t
    if args.tie_embeddings:
        if "tok_embeddings.weight" in out:
            out["output.weight"] = out["tok_embeddings.weight"]
    elif "output.weight" not in out:
        raise KeyError("the checkpoint has no lm_head.weight but tie_word_embeddings is false")
    _check_complete(out, args, "Hugging Face checkpoint")
    return out


# ---- config --------------------------------------------------------------------------------
from titan_jepa.dtypes import DTYPE_NAMES as _DTYPE_NAMES  # noqa: E402


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


# ---- files ---------------------------------------------------------------------------------
def load_hf_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights of a HF checkpoint: ``path`` is a folder holding model.safetensors or a sharded
    set with model.safetensors.index.json, or one of those two files."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    if os.path.isdir(path):
        index = os.path.join(path, SAFE_INDEX)
        single = os.path.join(path, SAFE_WEIGHTS)
        if os.path.exists(index):
            path = index
        elif os.path.exists(single):
            path = single
        else:
            raise FileNotFoundError(f"no {SAFE_WEIGHTS} or {SAFE_INDEX} in '{path}'")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: '{path}'")
    if path.endswith(".json"):
        folder = os.path.dirname(path)
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_sd = load_file(os.path.join(folder, shard))
            out.update({k: v for k, v in shard_sd.items() if weight_map.get(k) == shard})
        missing = [k for k in weight_map if k not in out]
        if missing:
            raise KeyError(f"index lists weights missing from their shards: {missing[:5]}")
        return out
    return load_file(path)


def load_hf_config(folder: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(folder), CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {CONFIG} in '{folder}'")
    with open(path) as f:
        return json.load(f)


def _shard_name(i: int, n: int) -> str:
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def save_hf_checkpoint(sd: dict[str, torch.Tensor], args: ModelArgs, folder: str | os.PathLike,
                       dtype: torch.dtype = torch.float32, max_shard_bytes: int = 5 * 2**30,
                       **config_kwargs) -> list[str]:
    """Write ``sd`` (our names, full tensors) as a HF Llama checkpoint: config.json plus
    model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when
    it exceeds ``max_shard_bytes``. Returns the written weight file names."""
    from safetensors.torch import save_file

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    hf_sd = to_hf_state_dict(sd, args)
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in hf_sd.items()}
    # greedy shards in name order (layers in numeric order)
    def key(name):
        m = _HF_LAYER.match(name)
        return (1, int(m.group(1)), name) if m else ((0, 0, name) if "embed" in name else (2, 0, name))

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors, key=key):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    # remove stale weights from an earlier save into the same folder
    for f in os.listdir(folder):
        if f == SAFE_INDEX or re.fullmatch(r"model(-\d{5}-of-\d{5})?\.safetensors", f):
            os.remove(os.path.join(folder, f))
    meta = {"format": "pt"}
    if len(shards) == 1:
        names = [SAFE_WEIGHTS]
        save_file(shards[0], os.path.join(folder, SAFE_WEIGHTS), metadata=meta)
    else:
        names = [_shard_name(i + 1, len(shards)) for i in range(len(shards))]
        weight_map = {}
        for fname, shard in zip(names, shards):
            save_file(shard, os.path.join(folder, fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(folder, SAFE_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(folder, CONFIG), "w") as f:
        json.dump(hf_config_dict(args, dtype=dtype, **config_kwargs), f, indent=2)
    return names


def load_hf_checkpoint(folder: str | os.PathLike, **overrides) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """(our state dict, ModelArgs) from a HF Llama folder."""
    args = model_args_from_hf_config(load_hf_config(folder), **overrides)
    return from_hf_state_dict(load_hf_safetensors(folder), args), args


__all__ = [
    "to_hf_state_dict", "from_hf_state_dict", "hf_config_dict", "model_args_from_hf_config",
    "load_hf_safetensors", "load_hf_config", "save_hf_checkpoint", "load_hf_checkpoint",
]
