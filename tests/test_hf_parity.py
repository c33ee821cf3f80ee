"""Our Llama equals transformers' LlamaForCausalLM, and HF checkpoints round-trip.

No downloads: the HF model is built from a LlamaConfig in code.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from titan_jepa.checkpoint.hf import (  # noqa: E402
    from_hf_state_dict,
    hf_config_dict,
    load_hf_safetensors,
    model_args_from_hf_config,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from titan_jepa.models.llama import FLAVORS, ModelArgs, RopeScaling, build_model, rope_frequencies  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEQ = 128
TOL = 1e-4


def small_args(tie: bool = False) -> ModelArgs:
    # head_dim 32, theta 1e4, original context 64 (< SEQ): RoPE wavelengths 2*pi*1e4^(i/16)
    # fall in all three Llama-3.1 bands (< 16, 16..64, > 64), checked in test_rope_bands.
    return ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512,
                     multiple_of=32, ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=10000.0,
                     rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                              original_max_position_embeddings=64),
                     max_seq_len=256, tie_embeddings=tie)


def materialize(args: ModelArgs):
    m = build_model(args, "meta")
    m.to_empty(device="cpu")
    if args.tie_embeddings:  # nn.Module.to_empty() unties shared parameters
        m.output.weight = m.tok_embeddings.weight
    return m


def ours(args: ModelArgs, seed: int = 0):
    m = materialize(args)
    m.init_weights(seed)
    # torchtitan's init has zero-mean small weights; perturb norms so they matter too
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return m.eval()


def hf_model(args: ModelArgs, attn: str = "eager") -> LlamaForCausalLM:
    cfg = {k: v for k, v in hf_config_dict(args).items()
           if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    config = LlamaConfig(**cfg)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).eval()


def tokens(args: ModelArgs, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, args.vocab_size, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def test_rope_bands():
    args = small_args()
    s = args.rope_scaling
    hd = args.head_dim
    base = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    wavelen = 2 * math.pi / base
    hi, lo = s.original_max_position_embeddings / s.high_freq_factor, s.original_max_position_embeddings / s.low_freq_factor
    assert (wavelen < hi).sum() >= 2 and (wavelen > lo).sum() >= 2
    assert ((wavelen >= hi) & (wavelen <= lo)).sum() >= 2
    assert SEQ > s.original_max_position_embeddings
    # and our frequencies equal transformers' llama3 frequencies
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_model(args).config, "cpu")
    torch.testing.assert_close(rope_frequencies(args), inv, rtol=1e-6, atol=0)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_transformers(tie, attn):
    args = small_args(tie)
    m = ours(args)
    hf = hf_model(args, attn)
    res = hf.load_state_dict(to_hf_state_dict(m.state_dict(), args), strict=False)
    assert not res.unexpected_keys and res.missing_keys == (["lm_head.weight"] if tie else [])
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    tok = tokens(args)
    with torch.no_grad():
        a = m(tok).logits
        b = hf(tok).logits
        assert a.abs().max() > 1.0  # not a degenerate comparison
        assert max_diff(a, b) <= TOL
        # shifted positions (as in packed rows) reach past the original context too
        pos = torch.arange(SEQ)[None].expand(2, -1) + 100
        assert max_diff(m(tok, positions=pos).logits, hf(tok, position_ids=pos).logits) <= TOL


@pytest.mark.parametrize("tie", [False, True])
def test_state_dict_round_trip(tie):
    args = small_args(tie)
    sd = ours(args).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(sd, args), args)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    assert model_args_from_hf_config(hf_config_dict(args)) == args


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_config_round_trip_flavors(flavor):
    args = FLAVORS[flavor]
    back = model_args_from_hf_config(json.loads(json.dumps(hf_config_dict(args))))
    assert back == args
    assert LlamaConfig(**hf_config_dict(args)).intermediate_size == args.ffn_hidden_dim


@pytest.mark.parametrize("dim,inter", [(512, 1376), (512, 1000), (4096, 14336), (2048, 8192),
                                       (3072, 8192), (8192, 28672), (960, 2560), (576, 1536)])
def test_ffn_size_exact(dim, inter):
    cfg = {"hidden_size": dim, "intermediate_size": inter, "num_hidden_layers": 1,
           "num_attention_heads": 8, "vocab_size": 16, "max_position_embeddings": 64}
    assert model_args_from_hf_config(cfg).ffn_hidden_dim == inter


@pytest.mark.parametrize("tie", [False, True])
def test_hf_checkpoint_round_trip(tmp_path, tie):
    args = small_args(tie)
    m = ours(args)
    tok = tokens(args, seed=1)
    with torch.no_grad():
        ref = m(tok).logits
    for name, shard_bytes in (("single", 2**40), ("sharded", 300_000)):
        folder = tmp_path / name
        files = save_hf_checkpoint(m.state_dict(), args, folder, max_shard_bytes=shard_bytes)
        if name == "sharded":
            assert len(files) > 2 and (folder / "model.safetensors.index.json").exists()
        else:
            assert files == ["model.safetensors"]
        hf = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        assert hf.config.tie_word_embeddings == tie
        with torch.no_grad():
            assert max_diff(hf(tok).logits, ref) <= TOL
        # and back into our model: identical weights, identical logits
        with open(folder / "config.json") as f:
            back_args = model_args_from_hf_config(json.load(f))
        assert back_args == args
        m2 = materialize(back_args)
        m2.init_buffers()
        m2.load_state_dict(from_hf_state_dict(load_hf_safetensors(folder), back_args), strict=True)
        with torch.no_grad():
            assert torch.equal(m2.eval()(tok).logits, ref)


def test_bf16_save(tmp_path):
    args = small_args()
    m = ours(args)
    save_hf_checkpoint(m.state_dict(), args, tmp_path, dtype=torch.bfloat16)
    hf_sd = load_hf_safetensors(tmp_path / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in hf_sd.values())
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _cli(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf.py"), *argv],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    return r


def test_cli_round_trip(tmp_path):
    args = FLAVORS["debug"]
    m = materialize(args)
    m.init_weights(5)
    sd = m.state_dict()
    torch.save({"model": sd, "step": 3}, tmp_path / "ckpt.pt")
    r = _cli("--to-hf", "--src", str(tmp_path / "ckpt.pt"), "--dst", str(tmp_path / "hf"),
             "--flavor", "debug", "--max-shard-gb", "0.002")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    r = _cli("--from-hf", "--src", str(tmp_path / "hf"), "--dst", str(tmp_path / "back.pt"))
    assert r.returncode == 0, r.stderr
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # a missing path is one clear line
    r = _cli("--from-hf", "--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "x.pt"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr
