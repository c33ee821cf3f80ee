"""Per-segment attention vs the dense mask on the CPU, side by side (models/attention.py).

    python tools/bench_attention_blocks.py                       # SmolLM2-135M shape, random init
    python tools/bench_attention_blocks.py --segments 1 8 24 --rows 2 --seq 512

Packed rows of ``--seq`` tokens split into N equal segments (N = 8: next-token packing of
the synth samples; 24: LLM-JEPA's separate views and predictor segments); forward + backward
of the whole model with a loss over the logits, the dense-mask path and the per-segment path
alternating (order flipped every round). Prints each path's median step time and the ratio
dense / blocked (above 1: the blocks are faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from titan_jepa.models.attention import SDPAAttention
from titan_jepa.models.llama import ModelArgs, build_model

SMOLLM2 = dict(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, ffn_dim_multiplier=None,
               multiple_of=256, norm_eps=1e-5, rope_theta=100000.0, max_seq_len=2048, tie_embeddings=True)


def model_args(layers: int) -> ModelArgs:
    args = ModelArgs(**{**SMOLLM2, "n_layers": layers})
    assert args.ffn_hidden_dim == 1536  # SmolLM2-135M's intermediate_size
    return args


def step(model, tokens, seg, pos) -> float:
    t0 = time.perf_counter()
    logits = model(tokens, positions=pos, segment_ids=seg).logits
    logits.float().logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, nargs="+", default=[1, 8, 24])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    args = model_args(a.layers)
    model = build_model(args, "meta")
    model.to_empty(device="cpu")
    model.init_weights(0)
    backends = {"dense": SDPAAttention(blocked=False), "blocked": SDPAAttention(blocked=True)}
    print(f"model: dim {args.dim}, {args.n_layers} layers, {args.n_heads}/{args.n_kv_heads} heads, vocab "
          f"{args.vocab_size}; {a.rows} rows x {a.seq} tokens, fp32, {torch.get_num_threads()} threads")
    print("| segments per row | dense s/step | blocked s/step | dense / blocked |")
    print("| ---: | ---: | ---: | ---: |")
    for n in a.segments:
        length = a.seq // n
        seg = torch.arange(a.seq).clamp(max=n * length - 1).div(length, rounding_mode="floor")[None].repeat(a.rows, 1)
        pos = torch.arange(a.seq)[None].repeat(a.rows, 1) % length
        tokens = torch.randint(0, args.vocab_size, (a.rows, a.seq))
        times = {k: [] for k in backends}
        order = list(backends)
        for r in range(a.rounds + 1):
            for name in order:
                model.backend = backends[name]
                for layer in model.layers.values():
                    layer.attention.backend = backends[name]
                t = step(model, tokens, seg, pos)
                if r:  # round 0 warms up
                    times[name].append(t)
            order.reverse()
        d, b = statistics.median(times["dense"]), statistics.median(times["blocked"])
        print(f"| {n} | {d:.3f} | {b:.3f} | {d / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
