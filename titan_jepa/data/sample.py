"""One encoded chat or pairs sample, as the packers place it into a row.

A ``Sample`` is the full sequence (``ids``, ``labels``, already shifted) with the spans of
its last user and assistant contents, the Text / Code view contents, and, once an
objective has added view segments (LLM-JEPA's views, STP's mask views), its ``segments``:
the full sequence first, then the views, placed contiguously in one row. ``marks`` holds
each objective's offsets inside the sample (``marks["jepa"] = [pred, target]``), which its
``collate`` turns into row positions. Samples are JSON-able (``to_json`` / ``from_json``):
the packers' pending samples are part of the data loader's checkpointed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Segment:
    """Consecutive tokens of a row with positions from ``pos0``; they may also attend to the
    tokens of the sample's segment ``context`` (an index in the sample, -1: none) whose
    position is below ``context_len`` (the shared-prefix JEPA view)."""

    ids: list[int]
    labels: list[int]
    pos0: int = 0
    context: int = -1
    context_len: int = 0

    def to_json(self) -> list:
        if self.context < 0 and self.pos0 == 0:
            return [self.ids, self.labels]
        return [self.ids, self.labels, self.pos0, self.context, self.context_len]

    @classmethod
    def from_json(cls, x: list) -> "Segment":
        return cls(*x)


@dataclass
class Sample:
    """ids / labels: the full sequence; user / assistant: (start, end) of the last user and
    assistant contents in it; text_ids / code_ids: the contents of the Text and Code views;
    segments: empty (the full sequence alone) or every segment, the full one(s) first;
    full_segments: how many leading segments are full sequences with a next-token loss (2
    for a paraphrase pair); marks: objectives' offsets from the sample's first token."""

    ids: list[int]
    labels: list[int]
    user: tuple[int, int] = (0, 0)
    assistant: tuple[int, int] = (0, 0)
    text_ids: list[int] = field(default_factory=list)
    code_ids: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    full_segments: int = 1
    marks: dict[str, list[int]] = field(default_factory=dict)

    def all_segments(self) -> list[Segment]:
        return self.segments or [Segment(self.ids, self.labels)]

    def __len__(self) -> int:
        """Tokens of all its segments."""
        return sum(len(s.ids) for s in self.all_segments())

    def to_json(self) -> dict:
        out = {"ids": self.ids, "labels": self.labels, "user": list(self.user), "assistant": list(self.assistant),
               "text_ids": self.text_ids, "code_ids": self.code_ids}
        if self.segments:
            out["segments"] = [s.to_json() for s in self.segments]
        if self.full_segments != 1:
            out["full_segments"] = self.full_segments
        if self.marks:
            out["marks"] = self.marks
        return out

    @classmethod
    def from_json(cls, d: dict) -> "Sample":
        marks = dict(d.get("marks", {}))
        if "jepa" in d:  # loader states saved before samples were typed
            marks["jepa"] = d["jepa"]
        if "stp_views" in d:
            marks["stp"] = d["stp_views"]
        return cls(ids=d["ids"], labels=d["labels"], user=tuple(d["user"]), assistant=tuple(d["assistant"]),
                   text_ids=d["text_ids"], code_ids=d["code_ids"],
                   segments=[Segment.from_json(s) for s in d.get("segments") or []],
                   full_segments=d.get("full_segments", 1), marks=marks)
