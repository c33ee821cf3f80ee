"""Forward+backward throughput of our Llama vs transformers' LlamaForCausalLM, side by side.

    python tools/bench_model.py                      # ~35M params, batch 4 x 512, fp32, CPU
    python tools/bench_model.py --device cuda --dtype bfloat16 --batch 8 --seq 2048
    python tools/bench_model.py --variants           # also time candidate changes to llama.py
    python tools/bench_model.py --hf-folder models/SmolLM2-135M-Instruct --batch 2 --seq 512
                                                     # a real model: its shape and weights, both sides

Both models get the same config, the same weights (ours converted with hf_convert; with
--hf-folder, the folder's config.json and weights: ours loaded through titan_jepa/checkpoint/weights.py,
theirs with ``LlamaForCausalLM.from_pretrained``), the same tokens and the same loss (cross entropy over the logits, computed outside the models). After
warmup, rounds alternate between the models (order flipped every round) and each model's
median step time is reported as tokens/s, with the ratio ours / HF.

--variants monkeypatches candidate implementations into titan_jepa.models (this process only)
and times them in the same interleaved rounds:
  gqa    SDPA with enable_gqa=True instead of repeat_interleave on k/v
  cplx   RoPE as a complex multiply (torch.view_as_complex), the torchtitan formulation
  fused  RoPE with one precomputed (S, D) cos/sin pair and a pair swap (no stack/flatten)
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from titan_jepa.checkpoint import hf as hf_convert
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.models import attention as attn_mod
from titan_jepa.models import llama
from titan_jepa.models.llama import ModelArgs, build_model


# ---- candidate implementations (prototypes for llama.py / attention.py) -----------------
def attend_enable_gqa(self, q, k, v, mask):
    gqa = k.shape[1] != q.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def apply_rope_complex(x, cos, sin):
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    f = torch.complex(cos, sin)[:, :, None, :]
    return torch.view_as_real(xc * f).flatten(-2).type_as(x)


def apply_rope_fused(x, cos, sin):
    # x * [c, c] + swap(x) * [-s, s] on interleaved pairs, with cos/sin repeated to D
    c = cos.repeat_interleave(2, dim=-1)[:, :, None, :]
    s = sin.repeat_interleave(2, dim=-1)[:, :, None, :]
    xf = x.float()
    x2 = xf.unflatten(-1, (-1, 2))
    swapped = torch.stack((-x2[..., 1], x2[..., 0]), dim=-1).flatten(-2)
    return (xf * c + swapped * s).type_as(x)


VARIANTS = {
    "gqa": {"attend": attend_enable_gqa},
    "cplx": {"rope": apply_rope_complex},
    "gqa+cplx": {"attend": attend_enable_gqa, "rope": apply_rope_complex},
    "fused": {"rope": apply_rope_fused},
}


@contextlib.contextmanager
def patched(variant: str | None):
    if variant is None:
        yield
        return
    p = VARIANTS[variant]
    old_rope, old_attend = llama.apply_rope, attn_mod.SDPAAttention.attend
    try:
        if "rope" in p:
            llama.apply_rope = p["rope"]
        if "attend" in p:
            attn_mod.SDPAAttention.attend = p["attend"]
        yield
    finally:
        llama.apply_rope, attn_mod.SDPAAttention.attend = old_rope, old_attend


# ---- models -----------------------------------------------------------------------------
def build_pair(args: ModelArgs, device, dtype, hf_attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = build_model(args, "meta")
    ours.to_empty(device=device)
    if args.tie_embeddings:
        ours.output.weight = ours.tok_embeddings.weight
    ours.init_weights(0)
    cfg = {k: v for k, v in hf_convert.hf_config_dict(args).items()
           if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    config = LlamaConfig(**cfg)
    config.use_cache = False
    config._attn_implementation = hf_attn
    with torch.device(device):
        hf = LlamaForCausalLM(config)
    hf.load_state_dict(hf_convert.to_hf_state_dict(ours.state_dict(), args), strict=False)
    ours.to(dtype).train()
    hf.to(dtype).train()
    return ours, hf


def load_pair(folder: str, device, dtype, hf_attn: str):
    """Ours and transformers' model of a Hugging Face folder, the same weights."""
    from pathlib import Path

    from transformers import LlamaForCausalLM

    from titan_jepa.checkpoint.weights import load_hf, read_model_args

    args = read_model_args("hf", Path(folder))
    ours = build_model(args, "meta")
    ours.to_empty(device=device)
    ours.init_buffers(device)
    load_hf(ours, Path(folder), "--hf-folder")
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=hf_attn)
    hf.config.use_cache = False
    return args, ours.to(device, dtype).train(), hf.to(device, dtype).train()


def step_fn(model, tokens, targets, is_hf: bool):
    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens).logits if is_hf else model(tokens).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        loss.backward()
        return loss

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--n-heads", type=int, default=8)
    p.add_argument("--n-kv-heads", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--hf-folder", help="a Hugging Face Llama folder: its shape and weights (the shape flags are ignored)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--hf-attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--warmup", type=int, default=1, help="steps per model before timing")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=1, help="steps per model per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: default)")
    p.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS),
                   help="also time these prototypes of ours (no names: all)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), DTYPES[a.dtype]
    if a.hf_folder:
        args, ours, hf = load_pair(a.hf_folder, device, dtype, a.hf_attn)
        a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size = (args.dim, args.n_layers, args.n_heads,
                                                                    args.n_kv_heads, args.vocab_size)
    else:
        args = ModelArgs(dim=a.dim, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads,
                         vocab_size=a.vocab_size, multiple_of=256, ffn_dim_multiplier=None,
                         rope_theta=500000.0, rope_scaling=llama.RopeScaling(factor=8.0, original_max_position_embeddings=a.seq // 2),
                         max_seq_len=a.seq)
        ours, hf = build_pair(args, device, dtype, a.hf_attn)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, args.vocab_size, (a.batch, a.seq + 1), generator=g).to(device)
    tokens, targets = data[:, :-1], data[:, 1:]
    variants = list(VARIANTS) if a.variants == [] else (a.variants or [])
    entries = [("ours", ours, False, None), ("hf", hf, True, None)]
    entries += [(f"ours+{v}", ours, False, v) for v in variants]
    print(f"config: {args.num_params() / 1e6:.1f}M params, dim {a.dim}, {a.n_layers} layers, "
          f"{a.n_heads}/{a.n_kv_heads} heads, vocab {a.vocab_size}, batch {a.batch} x {a.seq}, "
          f"{a.dtype}, {device}, threads {torch.get_num_threads()}, HF attn {a.hf_attn}", flush=True)

    # same loss before timing (a cheap parity check; variants must agree too)
    with torch.no_grad():
        ref = None
        for name, model, is_hf, v in entries:
            with patched(v):
                logits = model(input_ids=tokens).logits if is_hf else model(tokens).logits
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()).item()
            ref = loss if ref is None else ref
            print(f"  {name:>14}: loss {loss:.6f} (diff {abs(loss - ref):.2e})", flush=True)

    steps = {name: step_fn(model, tokens, targets, is_hf) for name, model, is_hf, _ in entries}
    for name, _, _, v in entries:
        with patched(v):
            for _ in range(a.warmup):
                steps[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name, *_ in entries}
    for r in range(a.rounds):
        order = entries if r % 2 == 0 else entries[::-1]
        for name, _, _, v in order:
            with patched(v):
                for _ in range(a.steps):
                    sync(device)
                    t0 = time.perf_counter()
                    steps[name]()
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
        print(f"  round {r + 1}/{a.rounds}: " + ", ".join(
            f"{n} {times[n][-1] * 1e3:.0f} ms" for n, *_ in entries), flush=True)

    ntok = a.batch * a.seq
    tps = {n: ntok / statistics.median(t) for n, t in times.items()}
    print("\nforward+backward tokens/s (median over rounds):")
    for n in tps:
        print(f"  {n:>14}: {tps[n]:>10,.0f} tok/s   ratio vs HF {tps[n] / tps['hf']:.3f}")
    print(f"\nratio ours/HF = {tps['ours'] / tps['hf']:.3f}")


if __name__ == "__main__":
    main()
