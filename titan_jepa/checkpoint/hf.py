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

import torch

from titan_jepa.config.hf_config import CONFIG, hf_config_dict, load_hf_config, model_args_from_hf_config
from titan_jepa.models.llama import ModelArgs

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


# ---- files ---------------------------------------------------------------------------------
def _load_file(path: str) -> dict[str, torch.Tensor]:
    """One safetensors file; a truncated or foreign file is a ValueError naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError)
        raise ValueError(f"'{path}' is not a complete safetensors file ({_first_line(e)}); "
                         f"download or convert it again") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_safetensors_headers(folder: str | os.PathLike) -> None:
    """Read the header of every weight file of a HF folder (cheap: no tensor data) and check
    that each file holds all the bytes its header promises; a ValueError names the bad one."""
    from safetensors import safe_open

    folder = os.fspath(folder)
    index = os.path.join(folder, SAFE_INDEX)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = [SAFE_WEIGHTS]
    for name in files:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if not 2 <= header_len <= min(os.path.getsize(path) - 8, 1 << 27):
                    raise ValueError(f"a header of {header_len} bytes")
                header = json.loads(f.read(header_len))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            with safe_open(path, framework="pt"):
                pass
        except OSError:
            raise
        except Exception as e:
            raise ValueError(f"'{path}' is not a complete safetensors file ({_first_line(e)[:120]}); "
                             f"download or convert it again") from None
        if os.path.getsize(path) < 8 + header_len + end:
            raise ValueError(f"'{path}' is truncated ({os.path.getsize(path)} bytes, its header promises "
                             f"{8 + header_len + end}); download or convert it again")


def load_hf_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Weights of a HF checkpoint: ``path`` is a folder holding model.safetensors or a sharded
    set with model.safetensors.index.json, or one of those two files."""
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
            shard_sd = _load_file(os.path.join(folder, shard))
            out.update({k: v for k, v in shard_sd.items() if weight_map.get(k) == shard})
        missing = [k for k in weight_map if k not in out]
        if missing:
            raise KeyError(f"index lists weights missing from their shards: {missing[:5]}")
        return out
    return _load_file(path)


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
    "load_hf_safetensors", "load_hf_config", "save_hf_checkpoint", "load_hf_checkpoint", "CONFIG",
]
