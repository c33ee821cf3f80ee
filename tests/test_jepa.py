"""LLM-JEPA: the packed single forward equals the reference's separate forwards."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TOKENIZER, launch, tiny_config
from titan_jepa.config import load_config
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.objectives import Objectives, build_objectives
from titan_jepa.objectives.jepa import jepa_distance_sum


def jepa_cfg(demo_dir, tmp_path, **jepa):
    cfg = tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl"),
                                                "loss_on": "all"},
                      training={"seq_len": 256, "local_batch_size": 4},
                      jepa={"enable": True, "lambda": 1.0, "gamma": 1.0, "k": 1, **jepa})
    return load_config(extra=cfg)


def fresh_model(seed=0):
    model = build_model(model_args_for("debug"), "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def header(tok, role):
    sp = tok.special_tokens
    return [tok.bos_id, sp["<|start_header_id|>"], *tok.encode(role), sp["<|end_header_id|>"],
            *tok.encode("\n\n")]


def reference_loss(model, batch, cfg, tok):
    """The reference repository's method: the full sequence, the Text view and the Code view
    are three separate forwards; Enc reads the token before <|eot_id|> (last_token = -2)."""
    j = cfg.jepa
    preds = tok.predictor_token_ids(j.k)
    ntp_sum, targets, dists = 0.0, 0, []
    for (row, _seg, start, length, us, ue, _as, _ae), text, code in zip(
            batch.samples.table.tolist(), batch.samples.text_ids, batch.samples.code_ids):
        full = batch.tokens[row, start:start + length][None]
        labels = batch.labels[row, start:start + length]
        logits = model(full).logits[0]
        ntp_sum = ntp_sum + F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        targets += int((labels != IGNORE_INDEX).sum())
        if j.views == "shared_prefix":
            # Text read inside the full sequence: prefix up to the user content, then predictors
            prefix = batch.tokens[row, start:ue].tolist()
            _, h = model(torch.tensor([prefix + preds]))
            pred = h[0, -1]
        else:
            text_view = header(tok, "user") + text + preds + [tok.eot_id]
            _, h = model(torch.tensor([text_view]))
            pred = h[0, -2]
        code_view = header(tok, "assistant") + code + [tok.eot_id]
        _, hc = model(torch.tensor([code_view]))
        dists.append(jepa_distance_sum(pred[None], hc[0, -2][None], j.distance))
    jepa = torch.stack(dists).sum() / len(dists)
    return j.gamma * ntp_sum / targets + j.lambda_ * jepa


def packed_loss(model, batch, cfg):
    obj = Objectives(build_objectives(cfg))
    return obj(model(batch.tokens, **batch.mask_inputs()), batch, batch.counts.vector()).loss


@pytest.mark.parametrize("views,k,distance", [
    ("separate", 1, "cosine"), ("separate", 3, "l2"), ("separate", 0, "mse"),
    ("shared_prefix", 2, "cosine"), ("shared_prefix", 0, "cosine"),
])
def test_packed_equals_three_forwards(demo_dir, tmp_path, views, k, distance):
    cfg = jepa_cfg(demo_dir, tmp_path, views=views, k=k, distance=distance)
    tok = build_tokenizer(cfg.tokenizer)
    batch = next(build_dataloader(cfg, tok))
    assert batch.record("jepa").pred.shape[0] == batch.samples.table.shape[0] >= 4
    model = fresh_model()
    packed = packed_loss(model, batch, cfg)
    packed.backward()
    g_packed = grads(model)
    model.zero_grad()
    ref = reference_loss(model, batch, cfg, tok)
    ref.backward()
    assert packed.item() == pytest.approx(ref.item(), abs=1e-5)
    for name, g in grads(model).items():
        torch.testing.assert_close(g_packed[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_one_row_holds_several_samples_with_views(demo_dir, tmp_path):
    cfg = jepa_cfg(demo_dir, tmp_path)
    batch = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
    rows = batch.samples.table[:, 0]
    assert torch.bincount(rows).max() >= 2
    # three segments per sample: full, Text(+pred), Code; positions restart in each, after
    # the prefix a view reads from an earlier segment of the row (data.share_prefix)
    seg = batch.segment_ids[0]
    starts = torch.nonzero(torch.diff(seg) != 0).flatten() + 1
    shared = batch.context_segment[0, starts] >= 0
    assert (batch.positions[0, starts][~shared] == 0).all()
    assert shared.any() and (batch.positions[0, starts][shared] == batch.context_len[0, starts][shared]).all()
    cfg.data.share_prefix = 0
    batch = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
    starts = torch.nonzero(torch.diff(batch.segment_ids[0]) != 0).flatten() + 1
    assert batch.context_segment is None and (batch.positions[0, starts] == 0).all()


def test_reverse_and_front_pred_indices(demo_dir, tmp_path):
    tok = build_tokenizer(load_config(extra={"tokenizer": {"path": str(TOKENIZER)}}).tokenizer)
    pred_id = tok.predictor_token_ids(1)[0]
    for opts, pred_token_is_pred in (({"reverse_pred": True}, True), ({"front_pred": True}, False)):
        cfg = jepa_cfg(demo_dir, tmp_path, **opts)
        batch = next(build_dataloader(cfg, tok))
        p, t = batch.record("jepa").pred, batch.record("jepa").target
        at_pred = batch.tokens[p[:, 0], p[:, 1]]
        at_target = batch.tokens[t[:, 0], t[:, 1]]
        assert ((at_pred == pred_id).all().item()) == pred_token_is_pred
        assert (at_target != pred_id).all()
        # both sit right before the view's <|eot_id|>
        assert (batch.tokens[t[:, 0], t[:, 1] + 1] == tok.eot_id).all()
        assert (batch.tokens[p[:, 0], p[:, 1] + 1] == tok.eot_id).all()


def test_last_token_offset_matches_computed_index(demo_dir, tmp_path):
    a = next(build_dataloader(jepa_cfg(demo_dir, tmp_path), build_tokenizer(jepa_cfg(demo_dir, tmp_path).tokenizer)))
    cfg = jepa_cfg(demo_dir, tmp_path, last_token=-2)
    b = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
    assert torch.equal(a.record("jepa").pred, b.record("jepa").pred)
    assert torch.equal(a.record("jepa").target, b.record("jepa").target)


def test_dropped_samples_add_no_tokens(demo_dir, tmp_path):
    cfg0 = load_config(extra=tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                                         training={"seq_len": 256}))
    tok = build_tokenizer(cfg0.tokenizer)
    plain = [next(it) for it in [build_dataloader(cfg0, tok)] for _ in range(3)]
    cfg = jepa_cfg(demo_dir, tmp_path, jepa_ratio=0.0)
    cfg.data.loss_on = cfg0.data.loss_on
    dropped = [next(it) for it in [build_dataloader(cfg, tok)] for _ in range(3)]
    for a, b in zip(plain, dropped):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.segment_ids, b.segment_ids)
        assert b.counts.view_tokens == 0 and b.record("jepa").pred.shape[0] == 0
    # half the samples: view tokens are exactly those of the kept samples
    cfg = jepa_cfg(demo_dir, tmp_path, jepa_ratio=0.5)
    batches = [next(it) for it in [build_dataloader(cfg, tok)] for _ in range(8)]
    kept = sum(b.record("jepa").pred.shape[0] for b in batches)
    total = sum(b.samples.table.shape[0] for b in batches)
    assert 0.25 < kept / total < 0.75
    for b in batches:
        view_tokens = int(b.counts.view_tokens)
        segs_per_row = [int(s.max()) + 1 for s in b.segment_ids]
        assert view_tokens == 0 or b.record("jepa").pred.shape[0] > 0
        assert sum(segs_per_row) >= b.samples.table.shape[0] + 2 * b.record("jepa").pred.shape[0]


def test_views_resume_identically(demo_dir, tmp_path):
    cfg = jepa_cfg(demo_dir, tmp_path, jepa_ratio=0.5)
    tok = build_tokenizer(cfg.tokenizer)
    a = build_dataloader(cfg, tok)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expect = [next(a) for _ in range(3)]
    b = build_dataloader(cfg, tok)
    b.load_state_dict(state)
    for x, y in zip(expect, (next(b) for _ in range(3))):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.record("jepa").pred, y.record("jepa").pred)


@pytest.mark.parametrize("distance", ["cosine", "l2", "mse", "infonce"])
def test_distances_equal_direct_formulas(distance):
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    got = jepa_distance_sum(p, t, distance)
    if distance == "cosine":
        want = sum(1 - (p[i] @ t[i]) / (p[i].norm() * t[i].norm()) for i in range(5))
    elif distance == "l2":
        want = sum(((p[i] - t[i]) ** 2).sum().sqrt() for i in range(5))
    elif distance == "mse":
        want = F.mse_loss(p, t) * 5
    else:
        u, a = p / p.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
        logits = u @ a.T / 0.07
        want = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(5))
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=got.dtype), atol=1e-5, rtol=1e-5)


def _infonce_worker(cfg_dict):
    """Each rank holds half of a global batch of embeddings; returns its loss and grads."""
    import torch.distributed as dist

    from titan_jepa.parallel.collectives import make_all_gather

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    p_all, t_all = torch.randn(7, 8, generator=g), torch.randn(7, 8, generator=g)
    sizes = [4, 3]  # ranks may hold different numbers of JEPA samples
    lo = sum(sizes[:rank])
    p = p_all[lo:lo + sizes[rank]].clone().requires_grad_()
    t = t_all[lo:lo + sizes[rank]].clone().requires_grad_()
    loss = jepa_distance_sum(p, t, "infonce", gather=make_all_gather(None), rank=rank)
    loss.backward()
    out = [None] * world
    dist.all_gather_object(out, (loss.item(), p.grad.tolist(), t.grad.tolist()))
    return out


def test_infonce_negatives_from_all_ranks(tmp_path):
    results = launch(2, {}, tmp_path, fn=_infonce_worker)
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(7, 8, generator=g).requires_grad_(), torch.randn(7, 8, generator=g).requires_grad_()
    loss = jepa_distance_sum(p, t, "infonce")
    loss.backward()
    assert sum(r[0] for r in results) == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(torch.tensor(results[0][1] + results[1][1]), p.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(results[0][2] + results[1][2]), t.grad, atol=1e-5, rtol=1e-5)


# both views on FSDP 2, TP 2 and PP 2 (jepa_ratio 1): tests/test_golden.py; here loss dropout
@pytest.mark.parametrize("views,parallelism", [("shared_prefix", {})], ids=["shared_prefix-fsdp"])
def test_two_ranks_equal_one(demo_dir, tmp_path, views, parallelism):
    cfg = tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                      training={"seq_len": 256, "local_batch_size": 2, "steps": 4},
                      jepa={"enable": True, "views": views, "distance": "cosine", "jepa_ratio": 0.7})
    single = launch(1, cfg, tmp_path)
    double = launch(2, dict(cfg, parallelism=parallelism), tmp_path)
    assert double == pytest.approx(single, rel=1e-4)


def test_flex_block_mask_equals_dense_on_jepa_batch(demo_dir, tmp_path):
    """The shared-prefix JEPA mask through FlexAttention (compiled forward on CPU)."""
    cfg = jepa_cfg(demo_dir, tmp_path, views="shared_prefix", k=2)
    batch = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
    assert batch.context_segment is not None
    kwargs = dict(positions=batch.positions, segment_ids=batch.segment_ids,
                  context_segment=batch.context_segment, context_len=batch.context_len)
    dense = fresh_model()
    flex = build_model(model_args_for("debug", attn_backend="flex"), "meta")
    flex.to_empty(device="cpu")
    flex.init_weights(0)
    with torch.no_grad():
        torch.testing.assert_close(flex(batch.tokens, **kwargs), dense(batch.tokens, **kwargs),
                                   atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("views", ["shared_prefix", "separate"])
def test_paraphrase_pairs_equal_separate_forwards(demo_dir, tmp_path, views):
    """Pretraining on pairs: next-token on both plain sides, JEPA read inside them."""
    cfg = load_config(extra=tiny_config(
        tmp_path, demo_dir, data={"kind": "pairs", "path": str(demo_dir / "paraphrase_train.jsonl")},
        training={"seq_len": 128, "local_batch_size": 2},
        jepa={"enable": True, "k": 2, "views": views}))
    tok = build_tokenizer(cfg.tokenizer)
    batch = next(build_dataloader(cfg, tok))
    assert batch.record("jepa").pred.shape[0] >= 4
    model = fresh_model()
    packed = packed_loss(model, batch, cfg)
    preds = tok.predictor_token_ids(2)
    ntp, targets, dists = 0.0, 0, []
    for (row, _seg, start, _len, _us, _ue, _as, _ae), a_txt, b_txt in zip(
            batch.samples.table.tolist(), batch.samples.text_ids, batch.samples.code_ids):
        a = [tok.bos_id, *a_txt, tok.eos_id]
        b = [tok.bos_id, *b_txt, tok.eos_id]
        assert batch.tokens[row, start:start + len(a)].tolist() == a
        for side in (a, b):
            logits = model(torch.tensor([side])).logits[0]
            ntp = ntp + F.cross_entropy(logits[:-1], torch.tensor(side[1:]), reduction="sum")
            targets += len(side) - 1
        _, h = model(torch.tensor([a[:-1] + preds]))
        _, hb = model(torch.tensor([b]))
        dists.append(jepa_distance_sum(h[0, -1][None], hb[0, -2][None], "cosine"))
    ref = ntp / targets + torch.stack(dists).sum() / len(dists)
    assert packed.item() == pytest.approx(ref.item(), abs=1e-5)
