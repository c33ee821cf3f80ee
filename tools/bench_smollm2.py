"""Ours vs transformers on a real model's shape and weights (SmolLM2-135M-Instruct), on the
synth samples each side trains on, as ratios measured side by side in one run.

    python tools/bench_smollm2.py                          # 8 samples, 5 rounds
    python tools/bench_smollm2.py --samples 64 --rounds 5
    python tools/bench_smollm2.py --only ntp               # next-token only (or: jepa)

Forward + backward of one step (no optimizer: the same AdamW on both sides is not what
differs) in the layouts of tools/real_model_pair.py, losses checked equal first:

  next-token    ours: packed rows of 512 (the loader's best-fit packing)
                transformers: one row per sample, padded to the longest
  LLM-JEPA      ours: separate views packed (full, Text+predictor, Code as segments of rows),
                      each view's template prefix (SmolLM2's default system prompt) read once
                      a row (data.share_prefix, the default), and without that (share_prefix 0)
                ours: shared-prefix views (a variant of the objective, not the same loss)
                reference, 3 groups: transformers, full / Text / Code rows each padded to their
                own longest, three forwards (the reference's layout at its tightest padding)
                reference, 2 groups: transformers, full rows + Text|Code rows under a 4D mask,
                one forward (the reference's additive-mask variant)

Rounds alternate the variants (round 0 is a warm-up) and the median per variant is kept;
the ratios compare medians of the same rounds. Tokens/s counts real tokens (no padding).
Peak memory: the most bytes allocated at once during one step above what was allocated
before it (torch.profiler's memory events, op by op; CPU has no allocator statistics).
"""

from __future__ import annotations

import argparse

import torch

import real_model_pair as rmp  # tools/ is sys.path[0] under python tools/x.py
from bench_common import median_step_times, peak_bytes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rmp.add_pair_args(ap)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (each variant once per round)")
    ap.add_argument("--only", choices=["ntp", "jepa"])
    ap.add_argument("--skip", nargs="*", default=[], choices=["shared_prefix", "2groups"],
                    help="leave out ours shared-prefix / the reference's 2-group layout (long runs)")
    ap.add_argument("--no-memory", action="store_true")
    a = ap.parse_args(argv)
    pair = rmp.pair_from_args(a)
    steps, shapes, real = {}, {}, {}
    if a.only != "jepa":
        steps["ours next-token"], b = rmp.ours_step(pair, rmp.ntp_cfg(pair.cfg), False)
        shapes["ours next-token"] = tuple(b.tokens.shape)
        real["next-token"] = b.counts.full_tokens
        steps["transformers next-token"], shapes["transformers next-token"] = rmp.hf_ntp_step(pair, pair.cfg)
    if a.only != "ntp":
        from dataclasses import replace

        steps["ours JEPA separate"], b = rmp.ours_step(pair, pair.cfg, True)
        shapes["ours JEPA separate"] = tuple(b.tokens.shape)
        run = b.counts.full_tokens + b.counts.view_tokens
        unshared = replace(pair.cfg, data=replace(pair.cfg.data, share_prefix=0))
        steps["ours JEPA separate, share_prefix 0"], b = rmp.ours_step(pair, unshared, True)
        shapes["ours JEPA separate, share_prefix 0"] = tuple(b.tokens.shape)
        # tokens/s of every JEPA variant count the samples' tokens with their whole views
        real["jepa"] = b.counts.full_tokens + b.counts.view_tokens
        print(f"data.share_prefix = {pair.cfg.data.share_prefix}: the views' shared prefixes read once a row, "
              f"{run:,} tokens run instead of {real['jepa']:,} ({run / real['jepa']:.3f}x)")
        if "shared_prefix" not in a.skip:
            shared = replace(pair.cfg, jepa=replace(pair.cfg.jepa, views="shared_prefix"))
            steps["ours JEPA shared_prefix"], b = rmp.ours_step(pair, shared, True)
            shapes["ours JEPA shared_prefix"] = tuple(b.tokens.shape)
        steps["reference 3 groups"], shapes["reference 3 groups"] = rmp.hf_reference_step(pair, pair.cfg, 3)
        if "2groups" not in a.skip:
            steps["reference 2 groups (4D mask)"], shapes["reference 2 groups (4D mask)"] = \
                rmp.hf_reference_step(pair, pair.cfg, 2)
    print(f"{a.hf_folder}: {pair.margs.num_params() / 1e6:.1f}M params, {a.samples} samples, "
          f"{torch.get_num_threads()} threads, float32, forward + backward")
    losses = {name: float(step()) for name, step in steps.items()}
    for name, loss in losses.items():
        print(f"  loss {name}: {loss:.7f}")
    if "ours next-token" in losses:
        d = abs(losses["ours next-token"] - losses["transformers next-token"]) / losses["transformers next-token"]
        print(f"  next-token loss ours vs transformers: rel. diff {d:.1e}")
    if "ours JEPA separate" in losses:
        d = abs(losses["ours JEPA separate"] - losses["ours JEPA separate, share_prefix 0"])
        print(f"  LLM-JEPA loss ours separate, share_prefix on vs off: rel. diff {d / losses['ours JEPA separate']:.1e}")
        for ref in [r for r in ("reference 3 groups", "reference 2 groups (4D mask)") if r in losses]:
            d = abs(losses["ours JEPA separate"] - losses[ref]) / losses[ref]
            print(f"  LLM-JEPA loss ours separate vs {ref}: rel. diff {d:.1e}")
    times = median_step_times(steps, a.rounds)
    print(f"\n| variant | rows x length | s/step (median of {a.rounds}) | real tok/s |")
    print("|---|---|---|---|")
    for name, t in times.items():
        n = real["next-token" if "next-token" in name else "jepa"]
        print(f"| {name} | {shapes[name][0]} x {shapes[name][1]} | {t:.3f} | {n / t:,.0f} |")
    print()
    if "ours next-token" in times:
        r = times["transformers next-token"] / times["ours next-token"]
        print(f"next-token tokens/s ours / transformers: {r:.3f}x (target >= 1.10x: {'met' if r >= 1.10 else 'NOT met'})")
    if "ours JEPA separate" in times:
        goal = 0.8 if a.samples <= 8 else 0.7
        for ref in [r for r in ("reference 3 groups", "reference 2 groups (4D mask)") if r in times]:
            r = times["ours JEPA separate"] / times[ref]
            print(f"LLM-JEPA step ours separate / {ref}: {r:.3f}x"
                  + (f" (target <= {goal}x: {'met' if r <= goal else 'NOT met'})" if ref.endswith("3 groups") else ""))
        if "ours JEPA shared_prefix" in times and "reference 2 groups (4D mask)" in times:
            r = times["ours JEPA shared_prefix"] / times["reference 2 groups (4D mask)"]
            print(f"LLM-JEPA step ours shared_prefix / reference 2 groups: {r:.3f}x")
    if a.no_memory:
        return
    # after the times (profiling a step's memory is slow and, at 64 samples, near the RAM's limit)
    memory = {}
    for name, step in steps.items():
        memory[name] = peak_bytes(step)
        print(f"peak memory {name}: {memory[name] / 2**20:,.0f} MiB", flush=True)
    if "ours next-token" in memory:
        print(f"peak memory ours / transformers, next-token: "
              f"{memory['ours next-token'] / memory['transformers next-token']:.2f}")
    if "ours JEPA separate" in memory:
        print(f"peak memory ours separate / reference 3 groups: "
              f"{memory['ours JEPA separate'] / memory['reference 3 groups']:.2f}")


if __name__ == "__main__":
    main()
