"""The resumable data loader: records -> (shuffle) -> tokens -> packed rows -> ``Batch``.

    loader = build_dataloader(cfg, tokenizer, dp_rank, dp_world[, objectives])
    for batch in loader: ...          # Batch of (training.local_batch_size, training.seq_len)
    sd = loader.state_dict()          # {"dp_rank_<r>": "<json>"}, save it per rank
    loader.load_state_dict(sd)        # the next batches are exactly those that would have come

A plain deterministic iterator in the training process (no worker processes): tokenising
and packing run far faster than a model consumes tokens (see tools/bench_data.py). The
objectives (default: those the config enables, objectives/__init__.py) take part: each may
wrap the chat/pairs sample encoder with its view segments (``wrap_samples``) and adds its
record and item count to every batch (``collate``).

State: the source position (file, byte offset / row, line, epoch, record counter), the
shuffle buffer's records and RNG, the packer's unfinished document, pending sample or
(``data.pack_buffer`` > 1, best-fit packing) open and finished rows, the
bad-input counters and the batch count. It is one JSON string under a per-rank key, so it
survives torch.save and torch.distributed.checkpoint unchanged (DCP would otherwise merge
equal keys of different ranks and drop keys that a fresh loader does not have yet).

End of data: with ``data.num_epochs = -1`` the stream loops forever; otherwise after the
last epoch the last row is padded, the last batch is completed with all-padding rows (no
targets), and the next call raises StopIteration. Ranks may then differ by one batch:
drive training by step count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from titan_jepa.data.batch import Batch
from titan_jepa.data.chat import ChatSamples, with_chat_fields
from titan_jepa.data.packing import BestFitPacker, DocPacker, SamplePacker, collate
from titan_jepa.data.pairs import PairSamples
from titan_jepa.data.sources import BadLines, DataError, build_source
from titan_jepa.data.text import TextDocs
from titan_jepa.objectives import DataContext, build_objectives

STATE_VERSION = 2  # 2: records are assigned to batch slots by a hash (data/sources.py)
logger = logging.getLogger("titan_jepa.data")


class DataLoader:
    def __init__(self, cfg, tokenizer, dp_rank: int = 0, dp_world: int = 1, objectives=None):
        d, t = cfg.data, cfg.training
        if not 0 <= dp_rank < dp_world:
            raise DataError(f"dp_rank {dp_rank} is not in [0, {dp_world})")
        self.kind, self.rank, self.world, self.num_epochs = d.kind, dp_rank, dp_world, d.num_epochs
        self.batch_size, self.seq_len, self.pad_id = t.local_batch_size, t.seq_len, tokenizer.pad_id
        self.bad = BadLines(d.bad_lines)
        self.views = None
        self.objectives = build_objectives(cfg) if objectives is None else objectives
        self.ctx = DataContext(cfg, tokenizer, t.seq_len, cfg.job.seed, dp_rank, self.bad)
        self.source = build_source(d, dp_rank, dp_world, self.bad, cfg.job.seed)
        if d.kind == "text":
            self.encode = TextDocs(tokenizer, d.text_field, self.bad)
            self.packer = DocPacker(t.seq_len, tokenizer.pad_id, self._next_item)
        elif d.kind in ("chat", "pairs"):
            max_len = t.seq_len if d.max_sample_len == -1 else d.max_sample_len
            if not 0 < max_len <= t.seq_len:
                raise DataError(f"data.max_sample_len = {d.max_sample_len} must be in [1, training.seq_len = "
                                f"{t.seq_len}] (or -1: seq_len); a chat sample is never split across rows")
            self.encode = (ChatSamples(tokenizer, d.loss_on, max_len, self.bad) if d.kind == "chat"
                           else PairSamples(tokenizer, max_len, self.bad))
            # extra view segments packed next to each sample (JEPA's views, STP's mask views);
            # the one objective that adds them keeps their state (a counter)
            for o in self.objectives:
                wrapped = o.wrap_samples(self.encode, self.ctx)
                if wrapped is not self.encode:
                    self.views, self.encode = wrapped, wrapped
            self.packer = (BestFitPacker(t.seq_len, tokenizer.pad_id, self._next_item, d.pack_buffer,
                                         share_prefix=d.share_prefix)
                           if d.pack_buffer > 1 else
                           SamplePacker(t.seq_len, tokenizer.pad_id, self._next_item, d.share_prefix))
        self.batches = 0
        self._any_good = False  # whether this loader has accepted one record (or resumed past one)

    def _epoch(self) -> int:
        return self.source.source.state["epoch"]

    def interrupt_on(self, stop) -> None:
        """``stop()`` is checked at every bad record: once it is true, reading raises
        ``DataInterrupted`` instead of skipping on (the training loop passes its SIGTERM flag)."""
        self.bad.stop = stop

    def _next_item(self):
        """The next encoded document/sample of this slot, skipping bad input; None at the end.

        A whole pass of bad records raises DataError (``BadLines.report``), and so does data
        that ends (finite epochs) before one record was usable."""
        while True:
            rec = self.source.next()
            if rec is None:
                if not self._any_good and self.bad.run_counts:
                    self.bad.raise_all_bad(f"all {self.num_epochs} epoch(s)")
                return None
            self.bad.epoch = self._epoch()  # (FileSource keeps it current itself; hf: sources do not)
            item = self.encode(*rec)
            if item is not None:
                self.bad.mark_good()
                self._any_good = True
                return item

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        rows = []
        while len(rows) < self.batch_size:
            row = self.packer.next_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            if self.bad.counts:
                logger.warning("data exhausted after %d batches; skipped bad input: %s",
                               self.batches, self.bad.summary())
            raise StopIteration
        batch = collate(rows, self.batch_size, self.seq_len, self.pad_id)
        if self.kind in ("chat", "pairs"):
            batch = with_chat_fields(batch, rows)
        batch = add_records(batch, rows, self.objectives, self.ctx, self.batches)
        self.batches += 1
        return batch

    def stats(self) -> dict:
        """Counters for logging: batches yielded, epoch, bad input per reason."""
        return {"batches": self.batches, "epoch": self._epoch(), "bad_lines": dict(self.bad.counts)}

    def state_dict(self) -> dict[str, str]:
        state = {"version": STATE_VERSION, "kind": self.kind, "dp_world": self.world,
                 "source": self.source.state_dict(), "packer": self.packer.state_dict(),
                 "bad_lines": dict(self.bad.counts), "batches": self.batches,
                 "bad_since_epoch": self.bad.run_epoch,
                 "views": self.views.state_dict() if self.views is not None else None}
        return {f"dp_rank_{self.rank}": json.dumps(state)}

    def load_state_dict(self, sd: dict) -> None:
        key = f"dp_rank_{self.rank}"
        if key not in sd:
            raise DataError(f"data loader state has no '{key}' (saved with other batch slots: "
                            f"{', '.join(sorted(sd))})")
        state = json.loads(sd[key]) if isinstance(sd[key], (str, bytes)) else sd[key]
        # version 1 assigned records to slots by i % slots: the same with a single slot
        old_ok = state.get("version") == 1 and state.get("dp_world") == 1
        if (state.get("version") != STATE_VERSION and not old_ok) or state["kind"] != self.kind \
                or state["dp_world"] != self.world:
            raise DataError(f"data loader state was saved for kind={state.get('kind')}, dp_world="
                            f"{state.get('dp_world')}; this run has kind={self.kind}, dp_world={self.world}")
        self.source.load_state_dict(state["source"])
        self.packer.load_state_dict(state["packer"])
        self.bad.counts = dict(state["bad_lines"])
        self.batches = state["batches"]
        self.bad.run_epoch = state["bad_since_epoch"]
        self._any_good = self.batches > 0 or self._any_good
        if self.views is not None:
            self.views.load_state_dict(state["views"])


def add_records(batch: Batch, rows: list, objectives, ctx: DataContext, index: int) -> Batch:
    """``batch`` with each objective's record and loss items (in the objectives' order);
    ``index``: the batch's number in its slot (random choices depend on it)."""
    records, items = {}, {}
    for o in objectives:
        rec, items[o.name] = o.collate(batch, rows, ctx, index)
        if rec is not None:
            records[o.name] = rec
    return replace(batch, records=records, counts=replace(batch.counts, items=items))


def build_dataloader(cfg, tokenizer, dp_rank: int = 0, dp_world: int = 1, objectives=None) -> DataLoader:
    """The loader of one batch slot; raises DataError at once for a missing data.path."""
    return DataLoader(cfg, tokenizer, dp_rank, dp_world, objectives)


def count_batches(cfg, tokenizer, dp_rank: int = 0, dp_world: int = 1, objectives=None) -> int:
    """How many batches a fresh loader yields over data.num_epochs epochs (finite only).

    Packing is deterministic, so this is exact; it tokenises the data num_epochs times,
    which is fast for fine-tuning sets (see tools/bench_data.py)."""
    if cfg.data.num_epochs <= 0:
        raise DataError("count_batches needs data.num_epochs > 0")
    return sum(1 for _ in DataLoader(cfg, tokenizer, dp_rank, dp_world, objectives))
