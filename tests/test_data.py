"""Data pipeline: demo data, packing invariants, loss masks, DP sharding, bad input, resume."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from titan_jepa.config import JobConfig
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import SAMPLE_COLUMNS
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.sources import DataError, slot_of
from titan_jepa.data.tokenizer import TikTokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "llm_jepa"
sys.path.insert(0, str(ROOT / "tools"))
from make_demo_data import make_demo_data  # noqa: E402


@pytest.fixture(scope="module")
def tok() -> TikTokenizer:
    return TikTokenizer(ROOT / "assets/tokenizer/tokenizer.model")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("demo"), seed=0, n_train=300, n_test=20, n_docs=300)


def make_cfg(path, kind="text", seq_len=64, bs=2, **data) -> JobConfig:
    cfg = JobConfig()
    cfg.data.path, cfg.data.kind = str(path), kind
    cfg.training.seq_len, cfg.training.local_batch_size = seq_len, bs
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def take(loader, n):
    out = []
    for _ in range(n):
        try:
            out.append(next(loader))
        except StopIteration:
            break
    return out


def rows_of(batches):
    for b in batches:
        for r in range(b.tokens.shape[0]):
            yield b, r


def check_row_invariants(b, r, seq_len):
    tok, lab, pos, seg = b.tokens[r], b.labels[r], b.positions[r], b.segment_ids[r]
    assert tok.shape == (seq_len,) and b.tokens.dtype == torch.int64 and seg.dtype == torch.int32
    starts = torch.ones(seq_len, dtype=torch.bool)
    starts[1:] = seg[1:] != seg[:-1]
    assert (seg[starts] == torch.arange(int(starts.sum()), dtype=torch.int32)).all()  # 0, 1, 2, ...
    ctx = b.context_segment[r] if b.context_segment is not None else torch.full_like(seg, -1)
    ctx_len = b.context_len[r] if b.context_len is not None else torch.zeros_like(seg)
    for i in range(seq_len):  # positions restart at each segment start (after its context's prefix)
        assert pos[i] == ((ctx_len[i] if ctx[i] >= 0 else 0) if starts[i] else pos[i - 1] + 1)
    for i in range(seq_len - 1):
        if lab[i] == IGNORE_INDEX:
            continue
        assert seg[i] == seg[i + 1], "a label crosses a segment boundary"
        assert lab[i] == tok[i + 1]


# ---------------------------------------------------------------- demo data
def test_demo_data_deterministic(tmp_path):
    a = make_demo_data(tmp_path / "a", seed=0, n_docs=200)
    b = make_demo_data(tmp_path / "b", seed=0, n_docs=200)
    c = make_demo_data(tmp_path / "c", seed=1, n_docs=200)
    names = ["corpus.jsonl", "regex_train.jsonl", "regex_test.jsonl"]
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "corpus.jsonl").read_bytes() != (c / "corpus.jsonl").read_bytes()
    line = json.loads((a / "regex_train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    assert sum(1 for _ in open(a / "regex_train.jsonl")) == 2000


# ---------------------------------------------------------------- text
def test_text_packing_reconstructs_documents(demo, tok):
    cfg = make_cfg(demo / "corpus.jsonl", seq_len=96, bs=3, num_epochs=1)
    batches = list(build_dataloader(cfg, tok, 0, 1))
    stream = []
    for b, r in rows_of(batches):
        check_row_invariants(b, r, 96)
        keep = b.tokens[r] != tok.pad_id
        stream += b.tokens[r][keep].tolist()
        # a row's last token is labelled with the next row's first token when its document continues
    docs = [json.loads(x)["text"] for x in (demo / "corpus.jsonl").read_text().splitlines()]
    expect = [t for d in docs for t in tok.encode(d, bos=True, eos=True)]
    assert stream == expect
    # eos is each document's last token and has no target; labels never cross documents
    flat_tok = torch.cat([b.tokens.flatten() for b in batches])
    flat_lab = torch.cat([b.labels.flatten() for b in batches])
    assert (flat_lab[flat_tok == tok.eos_id] == IGNORE_INDEX).all()
    assert not (flat_lab == tok.bos_id).any()


def test_text_row_continuation_labels(demo, tok):
    batches = take(build_dataloader(make_cfg(demo / "corpus.jsonl", seq_len=32, bs=4), tok), 3)
    rows = [(b.tokens[r], b.labels[r]) for b, r in rows_of(batches)]
    for (t0, l0), (t1, _) in zip(rows, rows[1:]):
        if l0[-1] != IGNORE_INDEX:
            assert l0[-1] == t1[0]


def test_txt_and_parquet_and_folder(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first doc line one\nline two\n\n\nsecond doc\n\nthird doc")
    pq.write_table(pa.table({"text": ["parquet one", "parquet two"]}), tmp_path / "b.parquet", row_group_size=1)
    cfg = make_cfg(tmp_path, seq_len=16, bs=2, num_epochs=1)
    stream = []
    for b, r in rows_of(list(build_dataloader(cfg, tok))):
        stream += [t for t in b.tokens[r].tolist() if t != tok.pad_id]
    docs = ["first doc line one\nline two", "second doc", "third doc", "parquet one", "parquet two"]
    assert stream == [t for d in docs for t in tok.encode(d, bos=True, eos=True)]
    cfg.data.num_epochs = -1  # resume inside .txt paragraphs and parquet row groups
    full = take(build_dataloader(cfg, tok), 12)
    for n in range(1, 6):
        a = build_dataloader(cfg, tok)
        take(a, n)
        b = build_dataloader(cfg, tok)
        b.load_state_dict(a.state_dict())
        for x, y in zip(full[n:], take(b, 6)):
            _equal(x, y)
    cfg.data.num_epochs = 1
    cfg.data.path = str(tmp_path / "*.parquet")  # a glob
    assert sum(b.counts.items["ntp"] for b in build_dataloader(cfg, tok)) == sum(
        len(tok.encode(d)) + 1 for d in docs[3:])


def test_dp_sharding_disjoint_and_complete(demo, tok):
    docs = [json.loads(x)["text"] for x in (demo / "corpus.jsonl").read_text().splitlines()]
    world = 3
    seen = []
    for rank in range(world):
        loader = build_dataloader(make_cfg(demo / "corpus.jsonl", seq_len=128, bs=2, num_epochs=1), tok, rank, world)
        stream = [t for b, r in rows_of(list(loader)) for t in b.tokens[r].tolist() if t != tok.pad_id]
        text = tok.decode(stream)
        mine = [d for d in text.split("<|end_of_text|>") if d]
        seen.append([d.removeprefix("<|begin_of_text|>") for d in mine])
        assert seen[-1] == [d for i, d in enumerate(docs) if slot_of(i, world) == rank]
        assert len(seen[-1]) > len(docs) // (2 * world)  # the hash spreads the records
    assert sorted(sum(seen, [])) == sorted(docs)



def test_file_sharding_reads_whole_files_per_slot(tmp_path, tok):
    """data.shard_by = "file": slot r reads exactly files r, r+N, ... (sorted), each whole,
    resumes exactly, and too few files for the slots is one clear error."""
    files = []
    for i in range(5):
        files.append([f"file {i} doc {j} " * (j + 1) for j in range(3 + i)])
        (tmp_path / f"part-{i:02d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in files[-1]))
    world = 2
    for rank in range(world):
        cfg = make_cfg(tmp_path, seq_len=32, bs=2, num_epochs=1, shard_by="file")
        stream = [t for b, r in rows_of(list(build_dataloader(cfg, tok, rank, world)))
                  for t in b.tokens[r].tolist() if t != tok.pad_id]
        got = [d.removeprefix("<|begin_of_text|>") for d in tok.decode(stream).split("<|end_of_text|>") if d]
        assert got == sum(files[rank::world], [])
    cfg = make_cfg(tmp_path, seq_len=16, bs=2, shard_by="file")
    full = take(build_dataloader(cfg, tok, 1, world), 12)
    first = build_dataloader(cfg, tok, 1, world)
    take(first, 5)
    resumed = build_dataloader(cfg, tok, 1, world)
    resumed.load_state_dict(first.state_dict())
    for a, b in zip(full[5:], take(resumed, 7)):
        _equal(a, b)
    with pytest.raises(DataError, match=r"5 file\(s\) for 8 slots.*shard_by = 'record'"):
        build_dataloader(cfg, tok, 0, 8)

def test_num_epochs_and_padding(tmp_path, tok):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(5)))
    batches = list(build_dataloader(make_cfg(p, seq_len=16, bs=4, num_epochs=2), tok))
    n_tokens = 2 * sum(len(tok.encode(f"document number {i}")) + 2 for i in range(5))
    assert sum(int((b.tokens != tok.pad_id).sum()) for b in batches) == n_tokens
    assert all(b.tokens.shape == (4, 16) for b in batches)
    pad = batches[-1].tokens == tok.pad_id
    assert (batches[-1].labels[pad] == IGNORE_INDEX).all()


def test_hf_source_mocked(monkeypatch, tok):
    import datasets

    rows = [{"text": f"hf doc {i}"} for i in range(7)]
    calls = {}

    def fake_load(name, config=None, split=None, streaming=False):
        calls.update(name=name, split=split, streaming=streaming)
        return datasets.Dataset.from_list(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = make_cfg("hf:someone/corpus", seq_len=16, bs=1, num_epochs=1, hf_split="validation")
    got = []
    for rank in range(2):
        stream = [t for b in build_dataloader(cfg, tok, rank, 2) for t in b.tokens[0].tolist() if t != tok.pad_id]
        got += [d for d in tok.decode(stream).replace("<|begin_of_text|>", "").split("<|end_of_text|>") if d]
    assert calls == {"name": "someone/corpus", "split": "validation", "streaming": True}
    assert sorted(got) == sorted(r["text"] for r in rows)
    # resume inside an HF stream
    cfg.data.num_epochs = -1
    full = take(build_dataloader(cfg, tok), 6)
    a = build_dataloader(cfg, tok)
    take(a, 2)
    b = build_dataloader(cfg, tok)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(full[2:], take(b, 4)))
    # a datasets release without IterableDataset.state_dict: the resume replays with skip()
    monkeypatch.delattr(datasets.IterableDataset, "state_dict")
    a = build_dataloader(cfg, tok)
    take(a, 3)
    b = build_dataloader(cfg, tok)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(full[3:], take(b, 3)))



@pytest.mark.parametrize("world", [1, 2])
def test_hf_stream_resumes_from_its_own_state(monkeypatch, tmp_path, tok, world):
    """A real streaming ``datasets`` IterableDataset (local json shards): a resumed loader
    jumps to its saved stream position (no replay through skip()) and yields exactly the
    batches of an uninterrupted one, across epoch boundaries."""
    import datasets

    files = []
    for i in range(3):
        files.append(str(tmp_path / f"shard-{i}.jsonl"))
        Path(files[-1]).write_text("".join(json.dumps({"text": f"shard {i} doc {j} " * (1 + j % 4)}) + "\n"
                                           for j in range(6)))
    real_load = datasets.load_dataset

    def local_load(name, config=None, split=None, streaming=False):
        return real_load("json", data_files=files, split="train", streaming=True)

    monkeypatch.setattr(datasets, "load_dataset", local_load)
    cfg = make_cfg("hf:local/shards", seq_len=16, bs=2)
    rank = world - 1
    full = take(build_dataloader(cfg, tok, rank, world), 40)  # several epochs
    for n in (3, 11, 26):
        first = build_dataloader(cfg, tok, rank, world)
        take(first, n)
        state = json.loads(first.state_dict()[f"dp_rank_{rank}"])
        assert state["source"]["source"]["stream"] is not None
        resumed = build_dataloader(cfg, tok, rank, world)
        resumed.load_state_dict(first.state_dict())
        with monkeypatch.context() as m:
            m.setattr(datasets.IterableDataset, "skip", lambda *a, **k: pytest.fail("resume replayed the stream"))
            rest = take(resumed, 40 - n)
        for a, b in zip(full[n:], rest):
            _equal(a, b)

# ---------------------------------------------------------------- chat
def test_chat_packing_and_masks(demo, tok):
    lines = [json.loads(x) for x in (demo / "regex_train.jsonl").read_text().splitlines()]
    for loss_on in ("assistant", "all", "all_but_eot"):
        cfg = make_cfg(demo / "regex_train.jsonl", "chat", seq_len=128, bs=2, num_epochs=1, loss_on=loss_on)
        batches = list(build_dataloader(cfg, tok))
        k = 0
        for b in batches:
            for r in range(2):
                check_row_invariants(b, r, 128)
            cols = {c: i for i, c in enumerate(SAMPLE_COLUMNS)}
            for j, s in enumerate(b.samples.table.tolist()):
                row, seg, start, length = s[cols["row"]], s[cols["segment"]], s[cols["start"]], s[cols["length"]]
                enc = tok.encode_chat(lines[k]["messages"])
                ids = b.tokens[row, start:start + length].tolist()
                assert ids == enc.ids  # whole sample, never split
                assert (b.segment_ids[row, start:start + length] == seg).all()
                assert b.positions[row, start] == 0
                lab = b.labels[row, start:start + length].tolist()
                us, ue, as_, ae = (s[cols[c]] for c in ("user_start", "user_end", "assistant_start", "assistant_end"))
                assert tok.decode(b.tokens[row, us:ue].tolist()) == lines[k]["messages"][1]["content"]
                assert tok.decode(b.tokens[row, as_:ae].tolist()) == lines[k]["messages"][2]["content"]
                assert b.samples.text_ids[j] == b.tokens[row, us:ue].tolist()
                assert b.samples.code_ids[j] == b.tokens[row, as_:ae].tolist()
                targets = [i for i, t in enumerate(lab) if t != IGNORE_INDEX]
                if loss_on == "assistant":  # targets = assistant content + its <|eot_id|>
                    assert [start + i + 1 for i in targets] == list(range(as_, ae + 1))
                elif loss_on == "all_but_eot":  # the reference: every target but <|eot_id|>
                    assert targets == [i for i in range(length - 1) if ids[i + 1] != tok.eot_id]
                    assert len(targets) == length - 1 - 3  # system, user, assistant: 3 <|eot_id|>
                else:
                    assert targets == list(range(length - 1))
                assert lab[-1] == IGNORE_INDEX
                k += 1
        assert k == len(lines)


def test_loss_on_all_but_eot_is_all_without_eot_targets(tok):
    """The LLM-JEPA reference as it ran: pad = eos = <|eot_id|>, pad-id labels -100."""
    from titan_jepa.data.chat import ChatSamples
    from titan_jepa.data.sources import BadLines

    rec = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                        {"role": "assistant", "content": "a2"}]}
    every = ChatSamples(tok, "all", 512, BadLines("fail"))(rec, "x:1")
    ref = ChatSamples(tok, "all_but_eot", 512, BadLines("fail"))(rec, "x:1")
    assert ref.ids == every.ids
    eot_targets = [i for i, t in enumerate(every.labels) if t == tok.eot_id]
    assert len(eot_targets) == 5  # one per message
    assert ref.labels == [IGNORE_INDEX if i in eot_targets else t for i, t in enumerate(every.labels)]


def test_sample_packer_multi_segment_samples(tok):
    from titan_jepa.data.packing import SamplePacker
    from titan_jepa.data.sample import Sample, Segment

    samples = iter([Sample([1, 2, 3], [2, 3, -100], segments=[Segment([1, 2, 3], [2, 3, -100]), Segment([7, 8], [8, -100])]),
                    Sample([4, 5], [5, -100]), Sample([6] * 6, [-100] * 6)])
    packer = SamplePacker(8, 0, lambda: next(samples, None))
    r0, r1 = packer.next_row(), packer.next_row()
    assert r0.tokens == [1, 2, 3, 7, 8, 4, 5, 0] and r0.segment_ids == [0, 0, 0, 1, 1, 2, 2, 3]
    assert r0.positions == [0, 1, 2, 0, 1, 0, 1, 0] and [(a, b) for a, b, _ in r0.samples] == [(0, 0), (2, 5)]
    assert r1.tokens == [6] * 6 + [0, 0] and r1.labels[-2:] == [IGNORE_INDEX] * 2
    assert packer.next_row() is None


def test_chat_view_override(tmp_path, tok):
    p = tmp_path / "h.jsonl"
    line = {"messages": [{"role": "user", "content": "ctx\nA) x\nB) y"}, {"role": "assistant", "content": "A"}],
            "text": [{"role": "user", "content": "ctx"}], "code": [{"role": "assistant", "content": "x"}]}
    p.write_text(json.dumps(line) + "\n")
    b = next(build_dataloader(make_cfg(p, "chat", seq_len=64, bs=1), tok))
    assert b.samples.text_ids[0] == tok.encode("ctx") and b.samples.code_ids[0] == tok.encode("x")


# ---------------------------------------------------------------- bad input
BAD_TEXT = ['{"text": "good one"}', '{"text": "good two"', '{"body": "x"}', '{"text": "   "}', '[1, 2]',
            '', '{"text": 5}', '{"text": "good three"}']


def test_bad_lines_skip_text(tmp_path, tok, caplog):
    p = tmp_path / "t.jsonl"
    p.write_text("\n".join(BAD_TEXT) + "\n")
    loader = build_dataloader(make_cfg(p, seq_len=8, bs=2, num_epochs=1), tok)
    with caplog.at_level(logging.WARNING, logger="titan_jepa.data"):
        batches = list(loader)
    stream = [t for b, r in rows_of(batches) for t in b.tokens[r].tolist() if t != tok.pad_id]
    assert tok.decode(stream).count("<|end_of_text|>") == 2
    assert loader.stats()["bad_lines"] == {"malformed JSON": 1, "no text field 'text'": 1, "empty text": 1,
                                           "not a JSON object": 1, "text field 'text' is not a string": 1}
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping bad input") for m in msgs) == 5  # once per reason
    assert "t.jsonl:2: malformed JSON" in msgs[0] and "malformed JSON: 1" in msgs[-1]  # + end summary


@pytest.mark.parametrize("line_no,reason", [(2, "malformed JSON"), (3, "no text field"), (4, "empty text")])
def test_bad_lines_fail_text(tmp_path, tok, line_no, reason):
    p = tmp_path / "t.jsonl"
    lines = [BAD_TEXT[0]] * 4
    lines[line_no - 1] = BAD_TEXT[line_no - 1]
    p.write_text("\n".join(lines) + "\n")
    loader = build_dataloader(make_cfg(p, seq_len=8, bs=1, bad_lines="fail"), tok)
    with pytest.raises(DataError, match=rf"t\.jsonl:{line_no}: {reason}"):
        take(loader, 50)


def _chat(user="u", assistant="a", system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json.dumps({"messages": msgs})


BAD_CHAT = [_chat(), '{"messages": [', '{"text": "no messages"}',
            json.dumps({"messages": [{"role": "assistant", "content": "a"}]}),
            json.dumps({"messages": [{"role": "user", "content": "u"}]}),
            _chat(user="  "), _chat(assistant="word " * 200), _chat(system="s")]


def test_bad_lines_chat(tmp_path, tok):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(BAD_CHAT) + "\n")
    loader = build_dataloader(make_cfg(p, "chat", seq_len=64, bs=2, num_epochs=1), tok)
    batches = list(loader)
    assert sum(len(b.samples.table) for b in batches) == 2
    assert loader.stats()["bad_lines"] == {
        "malformed JSON": 1, "no messages": 1, "no user message before the assistant message": 1,
        "no assistant message": 1, "empty user message": 1, "sample longer than max_sample_len (64 tokens)": 1}
    for i in range(1, 7):
        p.write_text("\n".join([BAD_CHAT[0], BAD_CHAT[i]]) + "\n")
        with pytest.raises(DataError, match=r"c\.jsonl:2: "):
            take(build_dataloader(make_cfg(p, "chat", seq_len=64, bs=1, bad_lines="fail"), tok), 5)
    with pytest.raises(DataError, match="max_sample_len"):
        build_dataloader(make_cfg(p, "chat", seq_len=64, max_sample_len=65), tok)


def test_missing_path_and_all_bad(tmp_path, tok):
    with pytest.raises(DataError, match=r"nowhere\.jsonl.*make_demo_data\.py"):
        build_dataloader(make_cfg(tmp_path / "nowhere.jsonl"), tok)
    p = tmp_path / "bad.jsonl"
    p.write_text('{"x": 1}\n{"y": 2}\n')
    with pytest.raises(DataError, match="every record of batch slot 0 of 1 in a whole pass"):
        take(build_dataloader(make_cfg(p), tok), 2)


# ---------------------------------------------------------------- resume
def _equal(a, b):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.segment_ids, b.segment_ids)
    if a.samples is not None:
        assert torch.equal(a.samples.table, b.samples.table)
        assert a.samples.text_ids == b.samples.text_ids and a.samples.code_ids == b.samples.code_ids


@pytest.mark.parametrize("kind,shuffle", [("text", 0), ("text", 16), ("chat", 0), ("chat", 8)])
def test_resume_equality(demo, tok, kind, shuffle):
    path = demo / ("corpus.jsonl" if kind == "text" else "regex_test.jsonl")  # small: crosses epochs
    cfg = make_cfg(path, kind, seq_len=48 if kind == "text" else 128, bs=3, shuffle_buffer=shuffle)
    n, m = 7, 12
    full = take(build_dataloader(cfg, tok, 1, 2), n + m)
    first = build_dataloader(cfg, tok, 1, 2)
    take(first, n)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = build_dataloader(cfg, tok, 1, 2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    rest = take(resumed, m)
    assert len(rest) == m
    for a, b in zip(full[n:], rest):
        _equal(a, b)
    if shuffle:
        plain = take(build_dataloader(make_cfg(path, kind, seq_len=cfg.training.seq_len, bs=3), tok, 1, 2), n)
        assert any(not torch.equal(a.tokens, b.tokens) for a, b in zip(full, plain))


def test_the_seed_orders_the_data_only_through_the_shuffle_buffer(demo, tok):
    """job.seed draws the order through data.shuffle_buffer; with none, every seed reads the file
    in order (issue 22: fine-tuning runs of different seeds were then the same run)."""
    def first(seed, shuffle):
        cfg = make_cfg(demo / "regex_test.jsonl", "chat", seq_len=128, bs=3, shuffle_buffer=shuffle)
        cfg.job.seed = seed
        return take(build_dataloader(cfg, tok), 3)

    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(first(82, 0), first(23, 0)))
    a, b = first(82, 64), first(23, 64)
    assert any(not torch.equal(x.tokens, y.tokens) for x, y in zip(a, b))
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, first(82, 64)))


def test_resume_across_epochs_and_rank_mismatch(tmp_path, tok):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i} " * (i + 1)}) + "\n" for i in range(6)))
    cfg = make_cfg(p, seq_len=16, bs=2)
    full = take(build_dataloader(cfg, tok), 30)
    for n in (1, 5, 13):
        a = build_dataloader(cfg, tok)
        take(a, n)
        b = build_dataloader(cfg, tok)
        b.load_state_dict(a.state_dict())
        for x, y in zip(full[n:], take(b, 10)):
            _equal(x, y)
    with pytest.raises(DataError, match="dp_rank_1"):
        build_dataloader(cfg, tok, 1, 2).load_state_dict(a.state_dict())


# ---------------------------------------------------------------- shared LLM-JEPA data (optional)
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/llm_jepa not present")
def test_shared_llm_jepa_files(tok):
    for name in ("synth_train.jsonl", "hellaswag_test.jsonl", "gsm8k_test.jsonl"):
        cfg = make_cfg(SHARED / name, "chat", seq_len=512, bs=4, loss_on="assistant")
        loader = build_dataloader(cfg, tok)
        for b in take(loader, 5):
            assert b.tokens.shape == (4, 512) and b.counts.items["ntp"] > 0
            assert len(b.samples.text_ids) == b.samples.table.shape[0] > 0
