"""Paraphrase pairs (``data.kind = "pairs"``) for JEPA pretraining on plain text.

A line is ``{"text": A, "code": B}`` (two phrasings of one meaning), or a chat record whose
user and assistant messages are taken as A and B. No chat template: each side is a plain
document ``<|begin_of_text|> tokens <|end_of_text|>`` with a next-token loss on all its
tokens, and the two are consecutive segments of one row. The JEPA views (data/views.py)
read Text inside A and Code inside B, so a pair costs no tokens beyond its predictors:
``views = "shared_prefix"`` adds only the k predictor tokens (attending to A), and
``views = "separate"`` adds A's content + predictors as one more segment.
"""

from __future__ import annotations

from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import check_messages
from titan_jepa.data.sample import Sample, Segment
from titan_jepa.data.sources import BadLines


def _sides(obj) -> tuple[str, str] | str:
    """(A, B) texts, or the reason the record is not a pair."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    if isinstance(obj.get("text"), str) and isinstance(obj.get("code"), str):
        a, b = obj["text"].strip(), obj["code"].strip()
    elif "messages" in obj:
        reason = check_messages(obj)
        if reason:
            return reason
        msgs = obj["messages"]
        a = next(m["content"] for m in reversed(msgs) if m["role"] == "user").strip()
        b = next(m["content"] for m in reversed(msgs) if m["role"] == "assistant").strip()
    else:
        return "no 'text'/'code' pair (or messages)"
    if not a or not b:
        return "empty side of a pair"
    return a, b


class PairSamples:
    def __init__(self, tokenizer, max_len: int, bad: BadLines):
        self.tok, self.max_len, self.bad = tokenizer, max_len, bad

    def _doc(self, text: str) -> tuple[list[int], list[int]]:
        ids = [self.tok.bos_id, *self.tok.encode(text), self.tok.eos_id]
        return ids, ids[1:] + [IGNORE_INDEX]

    def __call__(self, obj, where: str) -> Sample | None:
        sides = _sides(obj)
        if isinstance(sides, str):
            self.bad.report(where, sides)
            return None
        (a, la), (b, lb) = self._doc(sides[0]), self._doc(sides[1])
        if len(a) + len(b) > self.max_len:
            self.bad.report(where, f"pair longer than max_sample_len ({self.max_len} tokens)")
            return None
        # "user"/"assistant": the content spans of A and B, as offsets in the sample
        return Sample(ids=a, labels=la, segments=[Segment(a, la), Segment(b, lb)], full_segments=2,
                      user=(1, len(a) - 1), assistant=(len(a) + 1, len(a) + len(b) - 1),
                      text_ids=a[1:-1], code_ids=b[1:-1])
