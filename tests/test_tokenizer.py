"""Tokenizers (tiktoken and HF kinds), special tokens, the Llama-3 chat template, the trainer tool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from titan_jepa.data.tokenizer import (
    HFTokenizer, TikTokenizer, TokenizerError, build_tokenizer, llama3_special_names,
)

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "assets/tokenizer/tokenizer.model"
TEXTS = [
    "Hello world! The gentle engine follows the scientist at night.",
    "lines containing the string 'dog' followed by a number: (.*[0-9]){3,}",
    "  leading spaces, tabs\tand\n\nnewlines\r\n and unicode: héllo wörld, 日本語, emoji 😀🚀",
    "",
    "<|eot_id|> looks special but is plain text here",
]


@pytest.fixture(scope="module")
def tik() -> TikTokenizer:
    return TikTokenizer(ASSET)


def _make_hf_json(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = llama3_special_names()[:12]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf(tmp_path_factory) -> HFTokenizer:
    return HFTokenizer(_make_hf_json(tmp_path_factory.mktemp("hf") / "tokenizer.json"))


@pytest.mark.parametrize("kind", ["tik", "hf"])
def test_round_trip_text(kind, tik, hf):
    tok = tik if kind == "tik" else hf
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.special_tokens["<|eot_id|>"] not in ids  # special names in text stay text
    ids = tok.encode("abc", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "<|begin_of_text|>abc<|end_of_text|>"


@pytest.mark.parametrize("kind", ["tik", "hf"])
def test_special_tokens_round_trip(kind, tik, hf):
    tok = tik if kind == "tik" else hf
    text = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    ids = tok.encode(text, allow_special=True)
    assert ids[0] == tok.special_tokens["<|start_header_id|>"] and ids[-1] == tok.eot_id
    assert tok.decode(ids) == text
    assert len({tok.bos_id, tok.eos_id, tok.eot_id}) == 3


def test_llama3_special_layout(tik):
    n = tik.num_base_tokens
    names = llama3_special_names()
    assert len(names) == 256 and len(set(names)) == 256
    assert tik.vocab_size == n + 256 == 2304
    expect = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|reserved_special_token_0|>": 2,
              "<|finetune_right_pad_id|>": 4, "<|start_header_id|>": 6, "<|end_header_id|>": 7,
              "<|eom_id|>": 8, "<|eot_id|>": 9, "<|python_tag|>": 10,
              "<|reserved_special_token_2|>": 11, "<|reserved_special_token_246|>": 255}
    for name, off in expect.items():
        assert tik.special_tokens[name] == n + off
    assert (tik.bos_id, tik.eos_id, tik.eot_id, tik.pad_id) == (n, n + 1, n + 9, n + 4)


def test_jepa_tokens(tik):
    p = tik.predictor_token_ids(16)
    assert p == [tik.special_tokens[f"<|reserved_special_token_{k + 1}|>"] for k in range(1, 17)]
    assert tik.predictor_token_ids(0) == []
    assert tik.mask_id == tik.special_tokens["<|reserved_special_token_18|>"]
    assert tik.mask_id not in p and len(set(p)) == 16
    assert tik.encode("<|predictor_2|>", allow_special=True) == [p[1]]
    with pytest.raises(ValueError):
        tik.predictor_token_ids(17)


@pytest.mark.parametrize("kind", ["tik", "hf"])
def test_chat_template_layout(kind, tik, hf):
    tok = tik if kind == "tik" else hf
    msgs = [{"role": "system", "content": "Convert natural language to regular expression."},
            {"role": "user", "content": " lines with a number "},
            {"role": "assistant", "content": "([0-9]).*"}]
    enc = tok.encode_chat(msgs)
    sp = tok.special_tokens
    expect = [tok.bos_id]
    for m in msgs:
        expect += [sp["<|start_header_id|>"], *tok.encode(m["role"]), sp["<|end_header_id|>"],
                   *tok.encode("\n\n"), *tok.encode(m["content"].strip()), tok.eot_id]
    assert enc.ids == expect
    text = tok.decode(enc.ids)
    want = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>" for m in msgs)
    assert text == want
    us, ue = enc.user_span
    as_, ae = enc.assistant_span
    assert tok.decode(enc.ids[us:ue]) == "lines with a number"
    assert tok.decode(enc.ids[as_:ae]) == "([0-9]).*" and enc.ids[ae] == tok.eot_id
    assert enc.text_ids == enc.ids[us:ue] and enc.code_ids == enc.ids[as_:ae]
    assert [i for i, m in enumerate(enc.loss_mask) if m] == list(range(as_, ae + 1))
    assert [r for r, _, _ in enc.spans] == ["system", "user", "assistant"]


def test_build_tokenizer(tmp_path, hf):
    assert build_tokenizer(SimpleNamespace(kind="tiktoken", path=str(ASSET))).vocab_size == 2304
    with pytest.raises(TokenizerError, match="train_tokenizer.py"):
        build_tokenizer(SimpleNamespace(kind="tiktoken", path=str(tmp_path / "nope.model")))
    bad = tmp_path / "bad.model"
    bad.write_text("not base64 at all x y\n")
    with pytest.raises(TokenizerError, match="bad.model:1"):
        build_tokenizer(SimpleNamespace(kind="tiktoken", path=str(bad)))


def test_train_tokenizer_tool(tmp_path):
    from demo_data import make_demo_data

    data = make_demo_data(tmp_path / "demo", seed=0, n_train=100, n_test=10, n_docs=100)
    outs = []
    for i in range(2):
        out = tmp_path / f"tok{i}" / "tokenizer.model"
        subprocess.run([sys.executable, str(ROOT / "tools/train_tokenizer.py"), "--input", str(data),
                        "--vocab-size", "400", "--out", str(out)], check=True, capture_output=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    tok = TikTokenizer(tmp_path / "tok0" / "tokenizer.model")
    assert tok.vocab_size == 400 + 256
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text


def test_committed_tokenizer_is_reproducible(tmp_path):
    """assets/tokenizer/tokenizer.model = train_tokenizer.py on make_demo_data.py --seed 0."""
    from demo_data import make_demo_data

    data = make_demo_data(tmp_path / "demo", seed=0)
    out = tmp_path / "tokenizer.model"
    inputs = [str(data / name) for name in ("corpus.jsonl", "regex_test.jsonl", "regex_train.jsonl")]
    subprocess.run([sys.executable, str(ROOT / "tools/train_tokenizer.py"), "--input", *inputs,
                    "--vocab-size", "2048", "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == ASSET.read_bytes()
