"""Where a training step's time goes, by op class, ours beside transformers on a real model.

    python tools/profile_ops.py --hf-folder models/SmolLM2-135M-Instruct        # next-token, 8 samples
    python tools/profile_ops.py --hf-folder models/SmolLM2-135M-Instruct --jepa # LLM-JEPA separate views
                                                                                # vs the reference's 3 groups

Both sides run the layouts of tools/real_model_pair.py (ours: packed rows of the training
path; theirs: rows padded to the longest) on the same samples and weights, forward +
backward, under torch.profiler (CPU). Each op's self time is charged to one class:

  matmul        the projections (q/k/v/o, MLP), their backward
  attention     SDPA and everything the attention core does around it (ours: the mask, the
                per-segment slicing; theirs: repeat_kv, the mask)
  norms         RMSNorm, forward and backward
  rope          the rotary embedding (tables, the rotation), forward and backward
  head+loss     the vocabulary projection and the cross entropy
  embedding     the token embedding
  data movement copies, cat, index, contiguous outside the classes above
  other         the rest (SiLU, residual adds, the optimizer-free bookkeeping)

A forward op belongs to the innermost region it runs in (module hooks and wrapped
functions open ``record_function`` regions); a backward op to the forward op that made its
autograd node (the profiler's sequence numbers). Prints milliseconds per step and shares,
forward and backward, and ours / theirs per class.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import real_model_pair as rmp  # tools/ is sys.path[0] under python tools/x.py

CLASSES = ["matmul", "attention", "norms", "rope", "head+loss", "embedding", "data movement", "other"]
TAG = "cls::"
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "MmBackward", "AddmmBackward",
          "BmmBackward")
MOVEMENT = ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::index", "aten::_to_copy",
            "aten::to", "aten::repeat_interleave", "aten::stack", "aten::index_select", "aten::gather",
            "aten::scatter", "aten::index_put", "aten::expand", "aten::_unsafe_view", "aten::reshape",
            "CopyBackwards", "CatBackward", "IndexBackward", "CloneBackward", "StackBackward", "ToCopyBackward",
            "UnsafeViewBackward", "ViewBackward", "TransposeBackward", "PermuteBackward", "ExpandBackward",
            "SliceBackward", "SelectBackward", "UnsqueezeBackward", "SqueezeBackward", "ReshapeAlias")


def by_name(name: str) -> str:
    if "scaled_dot_product" in name or "flash_attention" in name or "Sdpa" in name or "FlashAttention" in name:
        return "attention"
    if any(name.startswith(m) or m in name for m in MATMUL):
        return "matmul"
    if any(name.startswith(m) or m in name for m in MOVEMENT):
        return "data movement"
    if "embedding" in name.lower():
        return "embedding"
    return "other"


@contextlib.contextmanager
def regions(model: nn.Module, hf: bool):
    """record_function regions: norms, rope, attention core, head, embedding (hooks and
    wrapped module-level functions, removed on exit)."""
    handles, restore = [], []

    def scope(module, cls):
        state = {}

        def pre(_m, _a):
            state["r"] = record_function(TAG + cls)
            state["r"].__enter__()

        def post(_m, _a, _o):
            state.pop("r").__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    def wrap(owner, attr, cls):
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def wrapped(*a, **k):
            with record_function(TAG + cls):
                return fn(*a, **k)

        setattr(owner, attr, wrapped)
        restore.append((owner, attr, fn))

    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind.endswith("RMSNorm"):
            scope(m, "norms")
        elif kind == "Embedding":
            scope(m, "embedding")
        elif kind.endswith("RotaryEmbedding"):
            scope(m, "rope")
        elif name.endswith("lm_head") or name == "output":
            scope(m, "head+loss")
    if hf:
        from transformers.integrations import sdpa_attention
        from transformers.models.llama import modeling_llama

        wrap(modeling_llama, "apply_rotary_pos_emb", "rope")
        wrap(sdpa_attention, "sdpa_attention_forward", "attention")
        if "sdpa" in modeling_llama.ALL_ATTENTION_FUNCTIONS:
            funcs = modeling_llama.ALL_ATTENTION_FUNCTIONS
            old = funcs["sdpa"]
            funcs["sdpa"] = sdpa_attention.sdpa_attention_forward
            restore.append((None, "sdpa", old))
        wrap(modeling_llama, "create_causal_mask", "attention")
    else:
        from titan_jepa.models import attention, llama

        wrap(llama, "apply_rope", "rope")
        wrap(attention.SDPAAttention, "attend", "attention")
        wrap(attention.SDPAAttention, "build_mask", "attention")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for owner, attr, fn in reversed(restore):
            if owner is None:
                from transformers.models.llama import modeling_llama

                modeling_llama.ALL_ATTENTION_FUNCTIONS[attr] = fn
            else:
                setattr(owner, attr, fn)


def loss_region(step):
    """The step with torch.nn.functional.cross_entropy inside a head+loss region."""
    import torch.nn.functional as F

    ce = F.cross_entropy

    def scoped(*a, **k):
        with record_function(TAG + "head+loss"):
            return ce(*a, **k)

    def run():
        F.cross_entropy = scoped
        try:
            return step()
        finally:
            F.cross_entropy = ce

    return run


def classify(events) -> dict[str, dict[str, float]]:
    """{'forward'|'backward': {class: self CPU ms}} over the profiled steps."""
    def region(e):
        p = e
        while p is not None:
            if p.name.startswith(TAG):
                return p.name[len(TAG):]
            p = p.cpu_parent
        return None

    def top_op(e):  # the outermost aten op above e (its class by name), below any region
        p, top = e, e
        while p is not None and not p.name.startswith(TAG):
            if p.name.startswith("aten::") or "Backward" in p.name:
                top = p
            p = p.cpu_parent
        return top

    seq_class: dict[int, str] = {}
    for e in events:  # forward ops that made an autograd node: their class
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::"):
            seq_class.setdefault(e.sequence_nr, region(e) or by_name(top_op(e).name))
    out = {"forward": defaultdict(float), "backward": defaultdict(float)}
    for e in events:
        if e.name.startswith(TAG) or e.name.startswith("ProfilerStep"):
            continue
        p, node = e, None
        while p is not None:
            if p.name.startswith("autograd::engine::evaluate_function:"):
                node = p
            p = p.cpu_parent
        if node is not None:
            node_name = node.name.split(":", 4)[-1].strip()
            cls = seq_class.get(node.sequence_nr)
            if cls in (None, "matmul", "other", "data movement"):
                cls = by_name(node_name)
            out["backward"][cls] += e.self_cpu_time_total / 1e3
        else:
            out["forward"][region(e) or by_name(top_op(e).name)] += e.self_cpu_time_total / 1e3
    return out


def profile_step(step, model, hf: bool, steps: int) -> dict[str, dict[str, float]]:
    step = loss_region(step)
    step()  # warm-up
    with regions(model, hf):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    got = classify(prof.events())
    return {d: {c: v / steps for c, v in got[d].items()} for d in got}


def table(results: dict[str, dict]) -> str:
    names = list(results)
    lines = ["| class | " + " | ".join(f"{n} fwd ms | {n} bwd ms | {n} share" for n in names) + " | "
             + f"{names[0]} / {names[1]} (fwd+bwd) |", "|---" * (3 * len(names) + 2) + "|"]
    totals = {n: sum(sum(results[n][d].values()) for d in ("forward", "backward")) for n in names}
    for c in CLASSES:
        row, both = [], []
        for n in names:
            f, b = results[n]["forward"].get(c, 0.0), results[n]["backward"].get(c, 0.0)
            both.append(f + b)
            row.append(f"{f:,.0f} | {b:,.0f} | {100 * (f + b) / totals[n]:.1f} %")
        ratio = f"{both[0] / both[1]:.2f}" if both[1] > 0 else "-"
        lines.append(f"| {c} | " + " | ".join(row) + f" | {ratio} |")
    tot = []
    for n in names:
        f, b = sum(results[n]["forward"].values()), sum(results[n]["backward"].values())
        tot.append(f"**{f:,.0f}** | **{b:,.0f}** | 100 %")
    lines.append("| total | " + " | ".join(tot) + f" | {totals[names[0]] / totals[names[1]]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    rmp.add_pair_args(ap)
    ap.add_argument("--jepa", action="store_true", help="LLM-JEPA separate views vs the reference's 3 groups")
    ap.add_argument("--steps", type=int, default=2, help="profiled steps per side (after one warm-up)")
    a = ap.parse_args(argv)
    pair = rmp.pair_from_args(a)
    if a.jepa:
        ours, batch = rmp.ours_step(pair, pair.cfg, True)
        theirs, shape = rmp.hf_reference_step(pair, pair.cfg, 3)
        what = "LLM-JEPA: ours separate views packed vs the reference's 3 groups (transformers)"
    else:
        ours, batch = rmp.ours_step(pair, rmp.ntp_cfg(pair.cfg), False)
        theirs, shape = rmp.hf_ntp_step(pair, pair.cfg)
        what = "next-token: ours packed vs transformers padded to the longest"
    print(f"{what}; {a.samples} samples; ours rows {tuple(batch.tokens.shape)}, theirs {shape}; "
          f"{torch.get_num_threads()} threads; ms per step (self CPU time), mean of {a.steps} steps")
    results = {"ours": profile_step(ours, pair.ours, False, a.steps),
               "transformers": profile_step(theirs, pair.hf, True, a.steps)}
    print(table(results))


if __name__ == "__main__":
    main()
