"""Context parallelism's attention (titan_jepa/parallel/context_parallel.py): the balancers'
shardings, and the all-gather attention on cp = 2 and 4 gloo processes against one process,
output and dq/dk/dv in float64, on causal, document, LLM-JEPA view, shared-prefix and random
block-sparse masks under each balancer."""

from __future__ import annotations

import pytest
import torch

from helpers import launch, train_each
from titan_jepa.models.attention import MaskMeta, dense_mask
from titan_jepa.parallel.context_parallel import (CPShapeError, Sharding, balance, check_seq_len, cost_balanced,
                                                  head_tail, shard)

S, B, HQ, HKV, D = 96, 2, 4, 2, 8


def test_seq_len_must_divide_by_tp_2_cp():
    check_seq_len(512, 4, 2)
    with pytest.raises(CPShapeError) as e:
        check_seq_len(500, 4, 2)
    assert str(e.value) == ("training.seq_len = 500 does not divide by tp x 2 x cp = 2 x 2 x 4 = 16; use "
                            "training.seq_len = 496 or 512")
    with pytest.raises(CPShapeError, match="use training.seq_len = 8$"):  # below one unit: the next one
        check_seq_len(6, 4)


def test_head_tail_holds_chunks_r_and_2cp_minus_1_minus_r():
    sh = head_tail(16, 4)  # chunks of 2
    assert sh.index.tolist() == [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    t = torch.arange(32).view(2, 16)
    assert torch.equal(sh.restore([sh.local(t, r) for r in range(4)]), t)


def _meta(kind: str, seed: int = 0) -> MaskMeta:
    """(B, S) mask metadata of one kind (every row its own layout)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "causal":
        return MaskMeta()
    seg = torch.zeros(B, S, dtype=torch.int64)
    pos = torch.zeros(B, S, dtype=torch.int64)
    ctx_seg = torch.full((B, S), -1, dtype=torch.int64)
    ctx_len = torch.zeros(B, S, dtype=torch.int64)
    for b in range(B):
        if kind == "documents":  # a length-1 document, one that straddles every chunk edge
            lengths = [1, 37, 5, 53]
        elif kind in ("jepa_views", "shared_prefix"):  # full | Text+pred | Code, twice, then padding
            lengths = [23, 9, 8, 21, 7, 10, 18]
        else:  # random block-sparse: random segment lengths
            cuts = sorted(torch.randperm(S - 1, generator=g)[:9].add(1).tolist())
            lengths = [y - x for x, y in zip([0] + cuts, cuts + [S])]
        start = 0
        for i, n in enumerate(lengths):
            seg[b, start:start + n], pos[b, start:start + n] = i, torch.arange(n)
            start += n
        if kind == "shared_prefix":  # the predictor segment (1) reads the first 15 of the full one (0)
            ctx_seg[b, 23:32], ctx_len[b, 23:32] = 0, 15
        if kind == "random":  # random contexts: segment i reads a prefix of segment i - 1
            for i in range(1, len(lengths)):
                if torch.rand(1, generator=g).item() < 0.5:
                    at = seg[b] == i
                    ctx_seg[b, at], ctx_len[b, at] = i - 1, int(torch.randint(1, 20, (1,), generator=g))
    has_ctx = kind in ("shared_prefix", "random")
    return MaskMeta(seg, pos, ctx_seg if has_ctx else None, ctx_len if has_ctx else None)


KINDS = ("causal", "documents", "jepa_views", "shared_prefix", "random")


def test_cost_balancer_is_a_permutation_and_balances_sparse_masks():
    for kind in KINDS:
        meta = _meta(kind)
        for cp in (2, 4):
            sh = cost_balanced(meta, S, cp, chunks_per_rank=4)
            assert sorted(sh.index.flatten().tolist()) == list(range(S))
            assert sh.index.shape == (cp, S // cp)
            assert balance(meta, sh) <= balance(meta, head_tail(S, cp)) + 1e-9 or kind == "causal", kind
    assert balance(MaskMeta(), head_tail(S, 4)) == pytest.approx(1.0)  # head-tail: exact for causal


def _max_over_ranks(err: float) -> float:
    """The largest of every rank's ``err`` (each rank checks its own part)."""
    import torch.distributed as dist

    t = torch.tensor(err, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _reference(q, k, v, w, meta):
    """One process: the whole rows, the dense mask; out and dq/dk/dv."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    from titan_jepa.parallel.context_parallel import local_attention

    allowed = dense_mask(meta, S, q.device) if meta.segment_ids is not None else \
        torch.ones(S, S, dtype=torch.bool).tril()[None, None]
    out = local_attention(q, k, v, allowed)
    (out * w).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _cp_check(cfg: dict) -> dict:
    """On each of cp ranks: every kind x balancer, this rank's output and gradients against
    the one-process reference; returns the largest error over all ranks (rank 0's copy)."""
    import torch.distributed as dist

    from titan_jepa.parallel.context_parallel import cp_attention

    dist.init_process_group("gloo")
    rank, cp = dist.get_rank(), dist.get_world_size()
    worst = {}
    for kind in KINDS:
        meta = _meta(kind)
        g = torch.Generator().manual_seed(1)
        q, w = (torch.randn(B, HQ, S, D, generator=g, dtype=torch.float64) for _ in range(2))
        k, v = (torch.randn(B, HKV, S, D, generator=g, dtype=torch.float64) for _ in range(2))
        ref = _reference(q, k, v, w, meta)
        for balancer in ("head_tail", "cost"):
            sh: Sharding = shard(meta, S, cp, balancer, chunks_per_rank=3)
            mine = sh.index[rank]
            ql, kl, vl = (t[:, :, mine].clone().requires_grad_() for t in (q, k, v))
            out = cp_attention(ql, kl, vl, meta, sh, None)
            (out * w[:, :, mine]).sum().backward()
            err = max(float((a - b[:, :, mine]).abs().max())
                      for a, b in zip((out.detach(), ql.grad, kl.grad, vl.grad), ref))
            worst[f"{kind}/{balancer}"] = _max_over_ranks(err)
    return worst


@pytest.mark.parametrize("cp", [2, 4])
def test_all_gather_attention_equals_one_process(tmp_path, cp):
    worst = launch(cp, {}, tmp_path, fn=_cp_check)
    assert set(worst) == {f"{k}/{b}" for k in KINDS for b in ("head_tail", "cost")}
    for name, err in worst.items():
        assert err < 1e-12, (name, err)


def _cp_model_check(cfg: dict) -> dict:
    """The debug Llama (float64) on packed rows of one mask kind, whole on one process and
    split over cp ranks (each rank its tokens, labels and per-document positions through
    one sharding; CPAttention in every layer): logits, the summed next-token loss and every
    parameter's gradient (summed over the cp ranks) against the one-process ones."""
    import torch.distributed as dist
    import torch.nn.functional as F

    from titan_jepa.models.llama import build_model, model_args_for
    from titan_jepa.parallel.context_parallel import apply_cp, cp_mask, shard

    dist.init_process_group("gloo")
    rank, cp = dist.get_rank(), dist.get_world_size()
    args = model_args_for("debug", max_seq_len=S)
    worst = {}
    for kind in cfg["kinds"]:
        meta = _meta(kind)
        g = torch.Generator().manual_seed(2)
        tokens = torch.randint(0, args.vocab_size, (B, S), generator=g)
        labels = torch.randint(0, args.vocab_size, (B, S), generator=g)
        labels[:, ::5] = -100
        positions = meta.positions if meta.positions is not None else torch.arange(S).expand(B, S)
        extra = {} if meta.segment_ids is None else dict(
            segment_ids=meta.segment_ids, context_segment=meta.context_segment, context_len=meta.context_len)
        for balancer in ("head_tail", "cost"):
            sh = shard(meta, S, cp, balancer, chunks_per_rank=3)
            # as drawn, and with every label of rank 0's tokens ignored (its loss is empty; its
            # tokens still get gradients through the keys and values the other ranks read)
            rank0 = torch.zeros(B, S, dtype=torch.bool)
            rank0[:, sh.index[0]] = True
            for variant, lab in (("labels", labels), ("rank0_ignored", labels.masked_fill(rank0, -100))):
                ref = build_model(args, "cpu")
                ref.init_weights(0)
                ref.double()
                logits = ref(tokens, positions=positions, **extra).logits
                F.cross_entropy(logits.flatten(0, 1), lab.flatten(), ignore_index=-100, reduction="sum").backward()
                model = build_model(args, "cpu")
                model.init_weights(0)
                model.double()
                apply_cp(model, None)
                out = model(sh.local(tokens, rank), positions=sh.local(positions, rank),
                            prepared_mask=cp_mask(meta, sh, rank)).logits
                loss = F.cross_entropy(out.flatten(0, 1), sh.local(lab, rank).flatten(), ignore_index=-100,
                                       reduction="sum")
                loss.backward()
                err = float((out - sh.local(logits, rank)).abs().max())
                for (name, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
                    dist.all_reduce(p.grad)  # what FSDP's reduce does over the cp ranks
                    err = max(err, float((p.grad - p_ref.grad).abs().max() / p_ref.grad.abs().max()))
                worst[f"{kind}/{balancer}/{variant}"] = _max_over_ranks(err)
    return worst


@pytest.mark.parametrize("cp,kinds", [(2, ["causal", "documents", "shared_prefix"]),
                                      (4, ["jepa_views", "random"])])
def test_model_under_cp_equals_one_process(tmp_path, cp, kinds):
    worst = launch(cp, {"kinds": kinds}, tmp_path, fn=_cp_model_check)
    assert len(worst) == 4 * len(kinds)
    for name, err in worst.items():
        assert err < 1e-10, (name, err)


def _cp_jepa_check(cfg: dict) -> dict:
    """LLM-JEPA's term under CP: each view embedding read on the rank holding it (rows_at),
    each sample's distance on one rank (sample_block; InfoNCE against every sample's
    target), the terms summed over the group: the loss and the gradient of every rank's
    hidden states equal one process's."""
    import torch.distributed as dist

    from titan_jepa.objectives.jepa import jepa_distance_sum, view_embeddings
    from titan_jepa.parallel.collectives import make_all_gather
    from titan_jepa.parallel.context_parallel import rows_at, sample_block, shard

    dist.init_process_group("gloo")
    rank, cp = dist.get_rank(), dist.get_world_size()
    meta = _meta("jepa_views")
    g = torch.Generator().manual_seed(3)
    full = torch.randn(B, S, 16, generator=g, dtype=torch.float64)
    m = 7  # samples: (row, position) of each one's predictor and target, some on one rank, some across
    pred_idx = torch.stack([torch.randint(0, B, (m,), generator=g), torch.randint(0, S, (m,), generator=g)], 1)
    target_idx = torch.stack([pred_idx[:, 0], torch.randint(0, S, (m,), generator=g)], 1)
    worst = {}
    for distance in ("cosine", "infonce"):
        ref_h = full.clone().requires_grad_()
        ref = jepa_distance_sum(*view_embeddings(ref_h, pred_idx, target_idx), distance)
        ref.backward()
        for balancer in ("head_tail", "cost"):
            sh = shard(meta, S, cp, balancer, chunks_per_rank=3)
            h = sh.local(full, rank).clone().requires_grad_()
            pred, target = (rows_at(h, i, sh, rank, None) for i in (pred_idx, target_idx))
            blocks = [sample_block(m, cp, r) for r in range(cp)]
            mine = blocks[rank]
            # InfoNCE's negatives: every rank's block of targets, as the objective's
            # data-parallel all-gather gives them (parallel/collectives.py)
            loss = jepa_distance_sum(pred[mine], target[mine], distance, gather=make_all_gather(None), rank=rank)
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            err = max(abs(float(total - ref)), float((h.grad - sh.local(ref_h.grad, rank)).abs().max()))
            worst[f"{distance}/{balancer}"] = _max_over_ranks(err)
    return worst


@pytest.mark.parametrize("cp", [2, 4])
def test_jepa_term_under_cp_equals_one_process(tmp_path, cp):
    worst = launch(cp, {}, tmp_path, fn=_cp_jepa_check)
    assert len(worst) == 4
    for name, err in worst.items():  # the distance itself runs in float32 (jepa_distance_sum)
        assert err < 1e-6, (name, err)


def _cp_flex_check(cfg: dict) -> dict:
    """The FlexAttention form of the all-gather attention (forward: FlexAttention has no CPU
    backward) against the dense-mask form, float32."""
    import torch.distributed as dist

    from titan_jepa.parallel.context_parallel import AllGatherAttention, cp_mask, flex_block_mask, shard

    dist.init_process_group("gloo")
    rank, cp = dist.get_rank(), dist.get_world_size()
    worst = {}
    for kind in ("causal", "documents", "shared_prefix"):
        meta = _meta(kind)
        g = torch.Generator().manual_seed(4)
        q = torch.randn(B, HQ, S, D, generator=g)
        k, v = (torch.randn(B, HKV, S, D, generator=g) for _ in range(2))
        sh = shard(meta, S, cp, "head_tail")
        mine = sh.index[rank]
        with torch.no_grad():
            dense = AllGatherAttention.apply(q[:, :, mine], k[:, :, mine], v[:, :, mine], cp_mask(meta, sh, rank), None)
            flex = AllGatherAttention.apply(q[:, :, mine], k[:, :, mine], v[:, :, mine],
                                            flex_block_mask(meta, sh, rank), None)
        worst[kind] = _max_over_ranks(float((dense - flex).abs().max()))
    return worst


def test_flex_form_of_the_all_gather_attention_equals_the_dense_one(tmp_path):
    worst = launch(2, {}, tmp_path, fn=_cp_flex_check)
    assert len(worst) == 3
    for kind, err in worst.items():
        assert err < 1e-5, (kind, err)


TRAINING_CASES = {  # id: (world, [parallelism], data, objective sections)
    "cp2-documents": (2, {"cp": 2}, "text", None),
    "cp2-cost-chat": (2, {"cp": 2, "cp_balancer": "cost"}, "chat", None),
    "dp_shard2-cp2-chat": (4, {"cp": 2, "dp_shard": 2}, "chat", None),
    "cp2-jepa-separate": (2, {"cp": 2}, "chat", {"jepa": {"k": 2}}),
    "cp2-cost-jepa-shared_prefix": (2, {"cp": 2, "cp_balancer": "cost"}, "chat",
                                    {"jepa": {"k": 1, "views": "shared_prefix"}}),
    # vs dp_shard 2: its negatives
    "dp_shard2-cp2-jepa-infonce": (4, {"cp": 2, "dp_shard": 2}, "chat", {"jepa": {"k": 1, "distance": "infonce"}}),
    "cp4-cost-jepa": (4, {"cp": 4, "cp_balancer": "cost", "cp_chunks_per_rank": 2}, "chat", {"jepa": {"k": 1}}),
    "cp2-stp-random_span": (2, {"cp": 2}, "text", {"stp": {"mode": "random_span", "spans_per_sample": 2,
                                                           "linear_predictor": True, "lambda": 0.5}}),
    "cp4-stp-random_span_mask": (4, {"cp": 4}, "chat", {"stp": {"mode": "random_span_mask", "lambda": 0.5}}),
    "cp2-cost-stp-curvature": (2, {"cp": 2, "cp_balancer": "cost"}, "text", {"stp": {"mode": "curvature",
                                                                                     "lambda": 0.5}}),
    "cp2-tp2-chat": (4, {"cp": 2, "tp": 2}, "chat", None),
    "cp2-tp2-cost-jepa": (4, {"cp": 2, "tp": 2, "cp_balancer": "cost"}, "chat", {"jepa": {"k": 1}}),
    "cp2-pp2-chat": (4, {"cp": 2, "pp": 2}, "chat", None),
    "cp2-pp2-interleaved-jepa": (4, {"cp": 2, "pp": 2, "pp_schedule": "Interleaved1F1B", "pp_stages_per_rank": 2},
                                 "chat", {"jepa": {"k": 1}}),
}


@pytest.mark.parametrize("world", [2, 4])
def test_training_under_cp_equals_one_process(demo_dir, tmp_path, world):
    """[parallelism] cp in the training loop: 5 AdamW steps of next-token, next-token +
    LLM-JEPA (separate views with 2 predictor tokens, shared-prefix, InfoNCE over dp x cp) or
    next-token + STP (spans and their masked views crossing the chunk boundaries, the linear
    predictor, curvature triples), on packed documents or chat rows (per-document positions,
    padding, views split across ranks), the losses equal one process's (InfoNCE: dp_shard
    2's, whose negatives span the two dp ranks' samples where one process sees one
    micro-batch's). Every case of a world size runs in one launch (process start-up is most
    of a case's time on 2 cores); a failure names its case."""
    from helpers import tiny_config

    def config(name, folder, parallelism):
        _, _, data, objective = TRAINING_CASES[name]
        sections = {"training": {"seq_len": 128}}
        if data == "chat":
            sections["data"] = {"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")}
        for section, keys in (objective or {}).items():
            sections[section] = {"enable": True, **keys}
        return tiny_config(tmp_path / name / folder, demo_dir, parallelism=parallelism, **sections)

    names = [n for n, case in TRAINING_CASES.items() if case[0] == world]
    infonce = [n for n in names if (TRAINING_CASES[n][3] or {}).get("jepa", {}).get("distance") == "infonce"]
    one = {n: launch(1, config(n, "one", {}), tmp_path) for n in names if n not in infonce}
    if infonce:
        runs = [config(n, "one", {"dp_shard": 2}) for n in infonce]
        one.update(zip(infonce, launch(2, {"runs": runs}, tmp_path, fn=train_each)))
    got = launch(world, {"runs": [config(n, "cp", TRAINING_CASES[n][1]) for n in names]}, tmp_path, fn=train_each)
    for name, losses in zip(names, got):
        assert len(losses) == 5 and losses[-1] < losses[0], name
        assert losses == pytest.approx(one[name], rel=2e-5), (name, losses, one[name])


def test_cp_refuses_what_it_does_not_run_yet_in_one_line(demo_dir, tmp_path):
    from helpers import tiny_config
    from titan_jepa.config import ConfigError, load_config
    from titan_jepa.models.llama import model_args_for
    from titan_jepa.parallel.mesh import ParallelDims

    args = model_args_for("debug")
    cases = {
        ("training", "seq_len", 102): "training.seq_len = 102 does not divide by tp x 2 x cp = 1 x 2 x 2 = 4; use "
                                      "training.seq_len = 100 or 104",
        ("compile", "enable", True): "parallelism.cp = 2 does not run with compile.enable yet",
    }
    for (section, key, value), message in cases.items():
        extra = tiny_config(tmp_path, demo_dir, parallelism={"cp": 2}, training={"seq_len": 128},
                            data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")})
        extra.setdefault(section, {})[key] = value
        cfg = load_config(extra=extra)
        with pytest.raises(ConfigError) as e:
            ParallelDims.from_config(cfg, 2).check(cfg, args)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match=r"x cp=2 x tp=1 = 4 but the world size is 2"):
        ParallelDims.from_config(load_config(extra=tiny_config(tmp_path, demo_dir, parallelism={"cp": 2, "dp_shard": 2})), 2)


def test_cp_checkpoint_resumes_on_another_cp_degree(demo_dir, tmp_path):
    """A cp 2 save resumes at one process and at dp_shard 2 x cp 2 (world 4); a one-process
    save resumes at cp 2: the losses after the resumed step equal the uninterrupted run's."""
    from helpers import tiny_config

    def cfg(name, parallelism, load_step=-1, link_from=None):
        c = tiny_config(tmp_path, demo_dir, training={"seq_len": 128}, parallelism=parallelism,
                        checkpoint={"enable": True, "interval": 3, "load_step": load_step})
        c["job"]["name"] = name
        if link_from:
            (tmp_path / name / "checkpoint").mkdir(parents=True)
            (tmp_path / name / "checkpoint" / "step-3").symlink_to(tmp_path / link_from / "checkpoint" / "step-3")
        return c

    one_full = launch(1, cfg("one", {}), tmp_path)
    cp_full, one_to_cp = launch(2, {"runs": [cfg("cp", {"cp": 2}), cfg("one-to-cp", {"cp": 2}, 3, "one")]},
                                tmp_path, fn=train_each)
    assert cp_full == pytest.approx(one_full, rel=2e-5)
    assert one_to_cp == pytest.approx(one_full[3:], rel=2e-5)
    assert launch(1, cfg("cp-to-one", {}, 3, "cp"), tmp_path) == pytest.approx(cp_full[3:], rel=2e-5)
    assert launch(4, cfg("cp-to-dp2cp2", {"cp": 2, "dp_shard": 2}, 3, "cp"), tmp_path) == pytest.approx(cp_full[3:], rel=2e-5)


def test_validation_under_cp_equals_one_process(demo_dir, tmp_path):
    """[validation] through the CP runner: the validation loss after 5 steps equals one
    process's (the sums added over the cp ranks, the counts over dp alone)."""
    import json

    from helpers import tiny_config

    def val_loss(world, name, parallelism):
        cfg = tiny_config(tmp_path, demo_dir, training={"seq_len": 128}, parallelism=parallelism,
                          validation={"enable": True, "path": str(demo_dir / "corpus.jsonl"), "freq": 5, "steps": 2})
        cfg["job"]["name"] = name
        launch(world, cfg, tmp_path)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r["val/loss"] for r in rows if "val/loss" in r]

    one, cp = val_loss(1, "one", {}), val_loss(2, "cp", {"cp": 2})
    assert len(one) == 1 and cp == pytest.approx(one, rel=2e-5)


def test_generation_eval_under_cp_equals_one_process(demo_dir, tmp_path):
    """validation.eval_scorer at cp 2: the lines are shared over dp x cp (the KV-cache decoder
    needs no CP), each scored once; the accuracy after memorising 8 short answers equals one
    process's, and so does the validation loss of the same run."""
    import json

    from helpers import tiny_config

    rows = [json.loads(x) for x in (demo_dir / "regex_train.jsonl").read_text().splitlines()]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [r for r in rows if len(r["messages"][-1]["content"]) <= 5][:8]))

    def val(world, name, parallelism):
        cfg = tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(data)}, parallelism=parallelism,
                          training={"steps": 20, "global_batch_size": 4, "local_batch_size": 4},
                          validation={"enable": True, "path": str(data), "freq": 10, "steps": 1,
                                      "eval_scorer": "exact", "eval_samples": 7, "eval_max_new_tokens": 8})
        cfg["job"]["name"] = name
        launch(world, cfg, tmp_path)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [(r["val/loss"], r["val/accuracy"], r["val/eval_samples"]) for r in rows if "val/accuracy" in r]

    one, cp = val(1, "one", {}), val(2, "cp", {"cp": 2})
    assert len(one) == 2 and one[-1][1] > 0, one
    assert [r[2] for r in cp] == [7, 7]  # 7 lines over 2 ranks (shares padded to 4): each once
    assert [r[1] for r in cp] == [r[1] for r in one]
    assert [r[0] for r in cp] == pytest.approx([r[0] for r in one], rel=2e-5)
