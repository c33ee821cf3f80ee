"""Property-based fuzzing (hypothesis) of the readers (text, chat, pairs; .jsonl and .txt),
the chat template, the packers and the TOML / command-line config parser: random bytes,
truncated and huge lines, odd unicode (lone surrogates, NUL, RTL marks), NaN/inf and deep
nesting. Either the output satisfies the invariants (row shapes, labels in range or
ignored and never across a segment, positions restarting per segment, no sample split) or
exactly one DataError / ConfigError is raised; never another exception, never a hang (each
case runs under an alarm).

Budget: the "ci" profile (default) keeps the whole file near 30 s on 2 busy cores; set
TITAN_JEPA_FUZZ=long (1250 examples per test, 50x) or TITAN_JEPA_FUZZ=<examples per test> for
longer local runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titan_jepa.config import ConfigError, JobConfig, config_from_argv, load_config
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import ChatSamples
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.sources import BadLines, DataError
from titan_jepa.data.tokenizer import TikTokenizer

from helpers import TOKENIZER
from test_data import check_row_invariants

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
_LONG = os.environ.get("TITAN_JEPA_FUZZ", "")
if _LONG:  # "long" (1250 examples per test) or a number of examples
    settings.register_profile("long", max_examples=1250 if _LONG == "long" else int(_LONG), deadline=None,
                              suppress_health_check=list(HealthCheck))
settings.load_profile("long" if _LONG else "ci")
PER_CASE_S = 20  # a case that takes longer is a hang
TOK = TikTokenizer(TOKENIZER)
SEQ = 64


@contextlib.contextmanager
def bounded(seconds=PER_CASE_S):
    def hang(signum, frame):
        raise TimeoutError(f"a fuzz case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---- strategies -------------------------------------------------------------------------
odd_text = st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=60) | st.sampled_from(
    ["\ud800", "a\udfffb", "\x00", "\u202e\u200f", "<|eot_id|>", "<|begin_of_text|>", " ", "\n\n", "😀" * 30])
role = st.sampled_from(["user", "assistant", "system", "tool", "", "USER"])
message = st.fixed_dictionaries({"role": role, "content": odd_text}) | st.dictionaries(
    st.sampled_from(["role", "content", "x"]), st.one_of(odd_text, st.integers(), st.none()), max_size=3)
chat_record = st.fixed_dictionaries({"messages": st.lists(message, max_size=5)})
good_chat = st.just({"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "ok"}]})
pair_record = st.fixed_dictionaries({"text": odd_text, "code": odd_text})
text_record = st.fixed_dictionaries({"text": odd_text | st.integers() | st.none()})
json_value = st.recursive(st.none() | st.booleans() | st.floats() | odd_text,
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(odd_text, c, max_size=3), max_leaves=8)


def as_line(obj) -> bytes:
    return json.dumps(obj).encode()  # NaN / Infinity stay JSON's own literals


@st.composite
def line(draw, kind):
    record = {"text": text_record, "chat": chat_record | good_chat, "pairs": pair_record}[kind]
    choice = draw(st.integers(0, 7))
    if choice == 0:
        return draw(st.binary(max_size=80))
    if choice == 1:  # a truncated good line
        full = as_line(draw(record))
        return full[: draw(st.integers(0, len(full)))]
    if choice == 2:  # a huge line
        return as_line({"text": "word " * 20000, "messages": [{"role": "user", "content": "x " * 20000}]})
    if choice == 3:
        return as_line(draw(json_value))
    if choice == 4:  # deep nesting
        depth = draw(st.sampled_from([10, 1000, 100000]))
        return b"[" * depth + b"]" * depth
    return as_line(draw(record))


def check_batch(b, kind):
    B, S = b.tokens.shape
    assert S == SEQ and b.labels.shape == b.tokens.shape == b.positions.shape == b.segment_ids.shape
    ok = (b.labels == IGNORE_INDEX) | ((b.labels >= 0) & (b.labels < TOK.vocab_size))
    assert bool(ok.all()) and bool(((b.tokens >= 0) & (b.tokens < TOK.vocab_size)).all())
    for r in range(B):
        check_row_invariants(b, r, S)
        if kind == "text":
            continue
        seg, tok = b.segment_ids[r], b.tokens[r]
        for s in seg.unique().tolist():  # no sample split: every sample segment is whole
            t = tok[seg == s]
            if bool((t == TOK.pad_id).all()):
                continue
            last = TOK.eot_id if kind == "chat" else TOK.eos_id
            assert t[0] == TOK.bos_id and t[-1] == last, t.tolist()


def run_loader(path, kind, shard_by="record", slots=1, num_epochs=1, batches=30, pack_buffer=0):
    cfg = JobConfig()
    cfg.data.path, cfg.data.kind, cfg.data.num_epochs, cfg.data.shard_by = str(path), kind, num_epochs, shard_by
    cfg.data.pack_buffer = pack_buffer  # chat/pairs: > 1 packs best-fit
    cfg.training.seq_len, cfg.training.local_batch_size = SEQ, 2
    for slot in range(slots):
        try:
            loader = build_dataloader(cfg, TOK, slot, slots)
            for _, b in zip(range(batches), loader):
                check_batch(b, kind)
        except DataError as e:
            assert "\n" not in str(e) and str(e)


# ---- readers and packers ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "chat", "pairs"])
@given(data=st.data())
def test_jsonl_readers_and_packers(tmp_path_factory, kind, data):
    lines = data.draw(st.lists(line(kind), min_size=0, max_size=12))
    shard_by = data.draw(st.sampled_from(["record", "file"]))
    num_epochs = data.draw(st.sampled_from([1, -1]))
    pack_buffer = 0 if kind == "text" else data.draw(st.sampled_from([0, 3]))
    folder = tmp_path_factory.mktemp("fuzz")
    half = len(lines) // 2
    (folder / "a.jsonl").write_bytes(b"\n".join(lines[:half]) + b"\n")
    (folder / "b.jsonl").write_bytes(b"\n".join(lines[half:]))
    with bounded():
        run_loader(folder, kind, shard_by, slots=2, num_epochs=num_epochs, pack_buffer=pack_buffer)


@given(raw=st.binary(max_size=400) | st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_txt_reader(tmp_path_factory, raw):
    p = tmp_path_factory.mktemp("txt") / "x.txt"
    p.write_bytes(raw)
    with bounded():
        run_loader(p, "text", num_epochs=-1, batches=4)


# ---- the chat template ----------------------------------------------------------------------
@given(record=chat_record | good_chat, loss_on=st.sampled_from(["assistant", "all", "all_but_eot"]))
def test_chat_template(record, loss_on):
    bad = BadLines("skip")
    with bounded():
        s = ChatSamples(TOK, loss_on, 10_000, bad)(record, "fuzz:1")
    if s is None:
        assert sum(bad.counts.values()) == 1
        return
    ids, labels = s.ids, s.labels
    assert len(ids) == len(labels) and ids[0] == TOK.bos_id and ids[-1] == TOK.eot_id
    assert all(0 <= i < TOK.vocab_size for i in ids)
    assert all(lab == IGNORE_INDEX or lab == ids[i + 1] for i, lab in enumerate(labels[:-1]))
    if loss_on == "all_but_eot":
        assert TOK.eot_id not in labels
    us, ue = s.user
    as_, ae = s.assistant
    assert 0 < us <= ue < as_ <= ae < len(ids) and ids[ae] == TOK.eot_id


# ---- the TOML file and the command line -------------------------------------------------------
SECTIONS = ["job", "training", "data", "optimizer", "checkpoint", "model", "nope"]
KEYS = ["steps", "lr", "path", "kind", "seq_len", "enable", "num_epochs", "max_norm", "name", "x"]
toml_value = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "+nan", "1e400", "-0.0", "0x7fffffffffffffff", "99999999999999999999",
                     "1" + "0" * 400, "true", '"cpu"', "'a\\b'", '"\\ud800"', "{}", "[]", "1979-05-27", "{a = {b = {c = 1}}}"]),
    st.integers(1, 3000).map(lambda d: "[" * d + "1" + "]" * d),
    st.integers(1, 3000).map(lambda d: "{a = " * d + "1" + "}" * d),
    st.text(max_size=20).map(json.dumps),
)


@st.composite
def toml_doc(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    out = []
    for _ in range(draw(st.integers(0, 4))):
        out.append(f"[{draw(st.sampled_from(SECTIONS))}]")
        for _ in range(draw(st.integers(0, 3))):
            out.append(f"{draw(st.sampled_from(KEYS))} = {draw(toml_value)}")
    text = "\n".join(out).encode("utf-8", "surrogatepass")
    return text[: draw(st.integers(0, len(text)))] if draw(st.booleans()) else text


@given(doc=toml_doc())
def test_toml_parser(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("toml") / "c.toml"
    p.write_bytes(doc)
    with bounded():
        try:
            cfg = load_config(p)
        except ConfigError as e:
            assert "\n" not in str(e)
            return
    assert isinstance(cfg, JobConfig) and cfg.optimizer.lr == cfg.optimizer.lr  # never NaN


cli_arg = st.one_of(st.sampled_from(["--training.steps", "--optimizer.lr", "--data.kind", "--config", "--x",
                                     "--training.steps=nan", "--optimizer.lr=inf", "--compile.enable", "-", "--"]),
                    st.text(max_size=12), st.sampled_from(["nan", "inf", "-1", "1e400", "true", "chat"]))


@given(argv=st.lists(cli_arg, max_size=6))
def test_cli_parser(argv):
    with bounded():
        try:
            cfg = config_from_argv(argv)
        except ConfigError as e:
            assert "\n" not in str(e)
            return
    assert isinstance(cfg, JobConfig) and cfg.optimizer.lr == cfg.optimizer.lr
