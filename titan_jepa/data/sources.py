"""Reading records: local files (.jsonl, .txt, .parquet; a file, folder or glob) or ``hf:NAME``.

A record is one JSON object (a .jsonl line, a parquet row, a Hugging Face row) or, for .txt
files, one paragraph: documents are separated by one or more blank lines.

Data-parallel sharding (``data.shard_by``), over the loader's batch slots ("ranks" here):
- "record" (default): records are numbered in file order within an epoch (blank lines do
  not count) and rank r keeps records i with ``slot_of(i, dp_world) == r``, a fixed hash of
  i (splitmix64), so the ranks read disjoint parts and together read everything. A hash, not
  i % dp_world: a file whose every second (or fourth) line is bad would otherwise hand all its
  bad lines to some slots and leave them nothing to train on. Other ranks' jsonl lines are
  skipped without parsing, but every rank still reads every byte: fine for fine-tuning sets.
- "file": rank r reads whole files r, r + dp_world, ... (in sorted order) and nothing else,
  for large pretraining corpora split into many files (at least one per slot). Ranks then
  hold different amounts of data, so use it with data.num_epochs = -1 (loop forever).
``hf:NAME`` (or ``hf:NAME:CONFIG``) streams ``datasets.load_dataset(NAME, CONFIG,
split=data.hf_split, streaming=True)`` split per rank by ``split_dataset_by_node``.

Every source keeps an exact position (file, byte offset or row, line, epoch; for ``hf:``
the record count and the stream's own ``state_dict()``) as a plain dict, so a restored
source yields exactly the records an uninterrupted one would, without re-reading the data
before it.

Bad input (``data.bad_lines``): ``BadLines.report`` either raises ``DataError('file:line:
reason')`` ("fail") or counts the reason, logging a warning the first time each reason
occurs ("skip"); the counts travel in the loader state. Every report, by the reader
(malformed JSON, not an object) or by an encoder (missing field, empty text, ...), also
extends the current run of consecutive bad records (``mark_good`` ends it): a run that
spans two epoch boundaries (24 with a shuffle buffer, which reorders records) means a whole
pass over the slot's files was bad, and raises
one ``DataError`` naming the files, the counts by cause and the fix; with finite epochs
the loader raises the same when the data ends without one good record. Reading never
spins silently: ``BadLines.stop`` (set by the training loop) is checked at every bad
record and raises ``DataInterrupted`` once SIGTERM has arrived.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from pathlib import Path

from titan_jepa.errors import DataError  # noqa: F401 (raised here, imported from here)

logger = logging.getLogger("titan_jepa.data")

SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
DEMO_HINT = "create demo data with: python tools/make_demo_data.py --out demo_data --seed 0"


class DataInterrupted(Exception):
    """SIGTERM arrived while data loading was skipping bad input (not a user error)."""


def _file_of(where: str) -> str:
    return where.rsplit(":", 1)[0] if ":" in where else where


class BadLines:
    """The bad-input policy, its per-reason counters and the run of consecutive bad records."""

    def __init__(self, policy: str, label: str = "this batch slot"):
        self.policy, self.label = policy, label
        self.counts: dict[str, int] = {}
        self.epoch = 0  # the reading source's epoch (kept up to date by FileSource)
        self.run_epoch: int | None = None  # epoch at which the current run of bad records began
        self.run_counts: dict[str, int] = {}  # causes of the current run (this process only)
        self.run_files: list[str] = []
        self.stop = None  # a callable: True once the run should stop (SIGTERM)
        # epoch boundaries a run must span to mean "all bad": 2 when records come in file
        # order; a shuffle buffer hands records out of order, so a run can span 2 boundaries
        # by chance (about e^-2 with one good record per pass), and 24 makes that < 1e-9
        self.passes = 2

    def report(self, where: str, reason: str) -> None:
        if self.policy == "fail":
            raise DataError(f"{where}: {reason} (set data.bad_lines = 'skip' to skip such input)")
        first = reason not in self.counts
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if first:
            logger.warning("skipping bad input %s: %s (further cases are counted, see loader.stats())",
                           where, reason)
        self.run_counts[reason] = self.run_counts.get(reason, 0) + 1
        if len(self.run_files) < 3 and _file_of(where) not in self.run_files:
            self.run_files.append(_file_of(where))
        if self.run_epoch is None:
            self.run_epoch = self.epoch
        elif self.epoch - self.run_epoch >= self.passes:
            self.raise_all_bad("a whole pass over its data")
        if self.stop is not None and self.stop():
            raise DataInterrupted(f"SIGTERM while skipping bad input of {self.label}")

    def mark_good(self) -> None:
        """A record was accepted: the run of bad records ends."""
        self.run_epoch = None
        self.run_counts, self.run_files = {}, []

    def raise_all_bad(self, what: str) -> None:
        counts = ", ".join(f"{r}: {n}" for r, n in sorted(self.run_counts.items())) or self.summary()
        files = ", ".join(self.run_files) or "data.path"
        raise DataError(f"every record of {self.label} in {what} is bad input ({counts}) in {files}; "
                        "fix or remove those lines, or check data.path, data.kind and data.text_field")

    def summary(self) -> str:
        return ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items())) or "none"


def resolve_files(path: str) -> list[Path]:
    """A file, a folder (every data file under it) or a glob -> sorted files; clear error if none."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in SUFFIXES)
    else:
        files = sorted(Path(q) for q in glob.glob(path, recursive=True) if Path(q).is_file())
    if not files:
        what = "has no .jsonl/.txt/.parquet files" if p.is_dir() else "does not exist"
        error = DataError(f"data.path '{path}' {what}; {DEMO_HINT}")
        error.same_on_every_rank = True  # every rank sees the same files: rank 0 alone reports it
        raise error
    for f in files:
        if f.suffix not in SUFFIXES:
            raise DataError(f"data.path: '{f}' is not one of {', '.join(SUFFIXES)}")
    return files


# ---- per-format readers: yield (payload, where_line, next_offset, next_line);
# payload None: a blank line (not a record). Offsets are bytes (text files) or rows (parquet).
def _read_jsonl(path: Path, offset: int, line: int):
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            offset += len(raw)
            line += 1
            yield (raw if raw.strip() else None), line, offset, line


def _read_txt(path: Path, offset: int, line: int):
    with open(path, "rb") as f:
        f.seek(offset)
        para: list[bytes] = []
        start = line + 1
        for raw in f:
            offset += len(raw)
            line += 1
            if raw.strip():
                if not para:
                    start = line
                para.append(raw)
            elif para:
                yield b"".join(para).decode("utf-8", "replace").strip("\n"), start, offset, line
                para = []
        if para:
            yield b"".join(para).decode("utf-8", "replace").strip("\n"), start, offset, line


def _read_parquet(path: Path, offset: int, line: int):
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    row = 0
    for g in range(pf.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row + n <= offset:
            row += n
            continue
        for obj in pf.read_row_group(g).to_pylist():
            if row >= offset:
                yield obj, row + 1, row + 1, row + 1
            row += 1


READERS = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".txt": _read_txt, ".parquet": _read_parquet}


class _Positioned:
    """A source whose position is the plain dict ``self.state``; ``self._it`` is re-opened
    from it after a load."""

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, sd: dict) -> None:
        self.state = dict(sd)
        self._it = None


_MASK = (1 << 64) - 1


def slot_of(index: int, world: int) -> int:
    """The batch slot of record ``index`` (splitmix64 of it, modulo ``world``)."""
    if world == 1:
        return 0
    z = (index + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) % world


class FileSource(_Positioned):
    """This rank's records from local files, looping over ``num_epochs`` epochs (-1: forever)."""

    def __init__(self, files: list[Path], dp_rank: int, dp_world: int, num_epochs: int, bad: BadLines,
                 shard_by: str = "record"):
        if shard_by == "file":
            if len(files) < dp_world:
                raise DataError(f"data.shard_by = 'file' needs at least one file per batch slot: "
                                f"{len(files)} file(s) for {dp_world} slots; split the data into more "
                                "files or use data.shard_by = 'record'")
            files, self.label = files[dp_rank::dp_world], f"batch slot {dp_rank} of {dp_world} (its files)"
            dp_rank, dp_world = 0, 1  # every record of this rank's files is its own
        else:
            self.label = f"batch slot {dp_rank} of {dp_world}"
        self.files, self.rank, self.world = files, dp_rank, dp_world
        self.num_epochs, self.bad = num_epochs, bad
        bad.label = self.label
        self.state = {"epoch": 0, "file": 0, "offset": 0, "line": 0, "record": 0, "taken": 0}
        self._it = None

    def next(self):
        """The next (obj, where) of this rank, or None when the last epoch is done."""
        s = self.state
        self.bad.epoch = s["epoch"]
        while True:
            if self.num_epochs != -1 and s["epoch"] >= self.num_epochs:
                return None
            path = self.files[s["file"]]
            if self._it is None:
                self._it = READERS[path.suffix](path, s["offset"], s["line"])
            item = next(self._it, None)
            if item is None:  # end of this file
                self._it = None
                s.update(file=s["file"] + 1, offset=0, line=0)
                if s["file"] == len(self.files):
                    if s.get("taken", 1) == 0:
                        raise DataError(f"data.path: no records for {self.label} in {len(self.files)} "
                                        "file(s); add data or use fewer batch slots")
                    s.update(epoch=s["epoch"] + 1, file=0, record=0, taken=0)
                    self.bad.epoch = s["epoch"]
                continue
            payload, where_line, s["offset"], s["line"] = item
            if payload is None:
                continue
            mine = slot_of(s["record"], self.world) == self.rank
            s["record"] += 1
            if not mine:
                continue
            s["taken"] = s.get("taken", 0) + 1
            where = f"{path}:{where_line}"
            if isinstance(payload, bytes):
                try:
                    obj = json.loads(payload)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    self.bad.report(where, "malformed JSON")
                    continue
                except RecursionError:
                    self.bad.report(where, "JSON nested too deeply")
                    continue
                if not isinstance(obj, dict):
                    self.bad.report(where, "not a JSON object")
                    continue
                payload = obj
            return payload, where


class HFSource(_Positioned):
    """``datasets.load_dataset(name, config, split=split, streaming=True)``, split per rank.

    Its position is the record count plus the stream's own ``IterableDataset.state_dict()``
    (shard and offset), so a resume jumps straight to the next record instead of re-reading
    and decoding every record before it; a ``datasets`` release without it falls back to
    ``skip(record)``."""

    def __init__(self, spec: str, split: str, dp_rank: int, dp_world: int, num_epochs: int):
        import datasets
        from datasets.distributed import split_dataset_by_node

        name, _, config = spec[len("hf:"):].partition(":")
        self.label = f"hf:{name}[{split}]"
        try:
            ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        except Exception as e:  # network, unknown name, ...: one clear line
            raise DataError(f"data.path '{spec}': could not open the Hugging Face dataset ({e})") from None
        self.ds = split_dataset_by_node(ds, rank=dp_rank, world_size=dp_world)
        # the start of an epoch (a stream that was loaded from a state restarts there otherwise)
        self._start = self.ds.state_dict() if hasattr(self.ds, "state_dict") else None
        self.num_epochs = num_epochs
        self.state = {"epoch": 0, "record": 0, "stream": None}
        self._it = None
        self._tracked = False  # whether self.ds.state_dict() is this source's position

    def state_dict(self) -> dict:
        sd = dict(self.state)
        if self._it is not None and self._tracked:
            sd["stream"] = self.ds.state_dict()  # just past the last record handed out
        return sd

    def next(self):
        s = self.state
        while True:
            if self.num_epochs != -1 and s["epoch"] >= self.num_epochs:
                return None
            if self._it is None:
                self._it = iter(self._open(s))
            obj = next(self._it, None)
            if obj is None:
                self._it = None
                if s["record"] == 0:
                    raise DataError(f"{self.label}: no records for this batch slot; use fewer slots")
                s.update(epoch=s["epoch"] + 1, record=0, stream=None)
                continue
            s["record"] += 1
            return dict(obj), f"{self.label}#{s['record']}"

    def _open(self, s: dict):
        """The stream from the state's position: its saved stream state, else a replay."""
        if self._start is not None:
            if s["record"] and s.get("stream"):
                self.ds.load_state_dict(s["stream"])
                self._tracked = True
                return self.ds
            self.ds.load_state_dict(self._start)
        # the start of an epoch, or a position saved without the stream's own state
        self._tracked = self._start is not None and not s["record"]
        return self.ds.skip(s["record"]) if s["record"] else self.ds


class ShuffleBuffer:
    """Keeps ``size`` records and hands out a random one; its contents and RNG are its state."""

    def __init__(self, source, size: int, seed: int):
        self.source, self.size = source, size
        self.rng = random.Random(seed)
        self.items: list = []
        self.exhausted = False

    def next(self):
        if self.size <= 0:
            return self.source.next()
        while not self.exhausted and len(self.items) < self.size:
            item = self.source.next()
            if item is None:
                self.exhausted = True
            else:
                self.items.append(item)
        if not self.items:
            return None
        i = self.rng.randrange(len(self.items))
        self.items[i], self.items[-1] = self.items[-1], self.items[i]
        return self.items.pop()

    def state_dict(self) -> dict:
        sd = {"source": self.source.state_dict(), "items": [list(x) for x in self.items],
              "exhausted": self.exhausted, "rng": None}
        if self.size > 0:
            version, internal, gauss = self.rng.getstate()
            sd["rng"] = [version, list(internal), gauss]
        return sd

    def load_state_dict(self, sd: dict) -> None:
        self.source.load_state_dict(sd["source"])
        self.items = [tuple(x) for x in sd["items"]]
        if sd["rng"] is not None:
            version, internal, gauss = sd["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
        self.exhausted = sd["exhausted"]


def build_source(data_cfg, dp_rank: int, dp_world: int, bad: BadLines, seed: int) -> ShuffleBuffer:
    """The record stream of one rank (with the optional shuffle buffer in front)."""
    if data_cfg.path.startswith("hf:"):
        src = HFSource(data_cfg.path, data_cfg.hf_split, dp_rank, dp_world, data_cfg.num_epochs)
    else:
        src = FileSource(resolve_files(data_cfg.path), dp_rank, dp_world, data_cfg.num_epochs, bad,
                         data_cfg.shard_by)
    if data_cfg.shuffle_buffer > 0:
        bad.passes = 24  # see BadLines.passes
    return ShuffleBuffer(src, data_cfg.shuffle_buffer, seed * 1000003 + dp_rank)
