"""FLOP counting and same-FLOP checkpoints."""

import pytest
import torch

from helpers import launch, tiny_config
from titan_jepa.data.batch import Batch
from titan_jepa.flops import SameFlopTracker, training_flops, visible_pairs
from titan_jepa.models.llama import model_args_for


def test_visible_pairs_follow_the_mask():
    seg = torch.tensor([[0, 0, 0, 1, 1, 2]])
    b = Batch(tokens=torch.zeros(1, 6, dtype=torch.long), labels=torch.zeros(1, 6, dtype=torch.long),
              positions=torch.tensor([[0, 1, 2, 0, 1, 0]]), segment_ids=seg)
    assert visible_pairs(b) == 6 + 3 + 1
    b.context_segment = torch.tensor([[-1, -1, -1, -1, -1, 0]])
    b.context_len = torch.tensor([[0, 0, 0, 0, 0, 2]])
    assert visible_pairs(b) == 10 + 2
    causal = Batch(tokens=torch.zeros(2, 4, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    assert visible_pairs(causal) == 2 * 10


def test_analytic_flops_against_the_flop_counter():
    """torch's counter sees the matmuls (6 x linear weights x tokens); on CPU it does not
    count the SDPA kernel, which the analytic count adds as 12 L d x visible pairs."""
    from torch.utils.flop_counter import FlopCounterMode

    from titan_jepa.models.llama import build_model

    args = model_args_for("debug", vocab_size=256)
    model = build_model(args, "meta")
    model.to_empty(device="cpu")
    model.init_weights(0)
    tokens = torch.randint(0, 256, (2, 64))
    with FlopCounterMode(display=False) as fc:
        model(tokens).logits.float().sum().backward()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert fc.get_total_flops() == 6 * linear * tokens.numel()
    norms = args.num_params(include_embedding=False) - linear
    pairs = 2 * 64 * 65 // 2
    analytic = training_flops(args, tokens.numel(), pairs)
    assert analytic == 6 * (linear + norms) * tokens.numel() + 12 * args.n_layers * args.dim * pairs


def test_same_flop_milestones():
    args = model_args_for("debug")
    tracker = SameFlopTracker(args, interval=10)
    # every step costs exactly twice the next-token FLOPs of its samples
    counts = torch.tensor([200.0, 2000.0, 100.0, 1000.0], dtype=torch.float64)
    passed = {}
    for step in range(1, 21):
        for m in tracker.update(step, counts):
            passed[m] = step
    assert tracker.ratio == pytest.approx(2.0, rel=1e-9)
    assert passed == {10: 5, 20: 10, 30: 15, 40: 20}


def test_same_flop_run_saves_at_milestones(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                      training={"seq_len": 256, "steps": 5},
                      checkpoint={"enable": True, "interval": 2, "keep_latest_k": 0, "same_flop": True},
                      jepa={"enable": True})
    launch(1, cfg, tmp_path)
    saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "t" / "checkpoint").glob("step-*")
                   if not p.name.endswith(".tmp"))
    # JEPA costs about twice a next-token step here, so it reaches next-token step 2k's FLOPs
    # near step k: same-FLOP saves land on odd steps too, besides the interval saves 2, 4, 5
    assert {2, 4, 5} <= set(saved)
    assert set(saved) - {2, 4, 5}, saved
    # the tracker is part of the checkpoint, so a resumed run saves at the same steps
    import json

    state = json.loads((tmp_path / "t" / "checkpoint" / "step-5" / "train_state.json").read_text())
    assert state["extra"]["same_flop"]["flops"] > state["extra"]["same_flop"]["ntp_flops"] > 0
    first = dict(cfg, job=dict(cfg["job"], dump_folder=str(tmp_path / "r")), training=dict(cfg["training"], steps=3))
    launch(1, first, tmp_path)
    launch(1, dict(first, training=dict(first["training"], steps=5)), tmp_path)
    resumed = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "r" / "t" / "checkpoint").glob("step-*"))
    assert resumed == saved


@pytest.mark.parametrize("sections", [
    {"stp": {"enable": True}},
    {"data": {"kind": "chat"}, "training": {"seq_len": 256}, "jepa": {"enable": True, "views": "shared_prefix"}},
], ids=["text-stp", "chat-jepa"])
def test_collated_counts_and_the_one_copy_move(demo_dir, tmp_path, sections):
    """BatchCounts, made from the rows on the CPU, equal what the batch tensors say; Batch.to
    moves every tensor through one buffer with values, dtypes and shapes unchanged."""
    from titan_jepa.config import load_config
    from titan_jepa.data.batch import IGNORE_INDEX, BatchCounts
    from titan_jepa.data.loader import build_dataloader
    from titan_jepa.data.tokenizer import build_tokenizer

    if "data" in sections:
        sections["data"]["path"] = str(demo_dir / "regex_train.jsonl")
    training = {"seq_len": 64, **sections.pop("training", {})}
    cfg = load_config(extra=tiny_config(tmp_path, demo_dir, training=training, **sections))
    batch = next(build_dataloader(cfg, build_tokenizer(cfg.tokenizer)))
    c = batch.counts
    assert c.pairs == visible_pairs(batch) and c.tokens == batch.tokens.numel()
    assert c.items["ntp"] == int((batch.labels != IGNORE_INDEX).sum()) > 0
    assert c.full_tokens + c.view_tokens + c.pad_tokens == c.tokens
    if batch.record("jepa") is not None:
        assert c.items["jepa"] == batch.record("jepa").pred.shape[0] == c.samples > 0 and c.view_tokens > 0
        assert batch.context_segment is not None and c.ntp_tokens == c.full_tokens < c.tokens
    else:
        assert c.items["stp"] == batch.record("stp").weight.shape[0] > 0 and (c.ntp_tokens, c.ntp_pairs) == (c.tokens, c.pairs)
    moved = batch.to("cpu")
    want = [float(v) for k, v in vars(c).items() if k != "items"] + [float(v) for v in c.items.values()]
    assert torch.equal(moved.count_vector, torch.tensor(want, dtype=torch.float64))
    assert moved.counts == c and isinstance(c, BatchCounts) and moved.samples is batch.samples
    pairs = [(moved.tokens, batch.tokens), (moved.labels, batch.labels), (moved.positions, batch.positions),
             (moved.segment_ids, batch.segment_ids)]
    if batch.record("jepa") is not None:
        pairs += [(moved.record("jepa").pred, batch.record("jepa").pred), (moved.record("jepa").target, batch.record("jepa").target),
                  (moved.context_len, batch.context_len), (moved.context_segment, batch.context_segment)]
    if batch.record("stp") is not None:
        pairs += [(getattr(moved.record("stp"), f), getattr(batch.record("stp"), f)) for f in ("index", "coef", "slot", "weight", "triples")]
    storages = set()
    for got, want in pairs:
        assert got.dtype == want.dtype and torch.equal(got, want)
        storages.add(got.untyped_storage().data_ptr())
    assert len(storages) == 1  # one buffer, one copy
