"""Chat / paired data (``data.kind = "chat"``): {"messages": [...]} records -> packed samples.

A record: ``{"messages": [{"role": "system", "content": ...}, {"role": "user", ...},
{"role": "assistant", ...}]}`` (system optional, more turns allowed). One sample is the
Llama-3 templated conversation (``chat_template.encode_chat``). Labels (already shifted):

- ``loss_on = "assistant"``: targets are every assistant message's content and its
  <|eot_id|>; everything else is IGNORE_INDEX.
- ``loss_on = "all"``: every next token of the sample (system, headers, user, assistant).
  The LLM-JEPA reference code in effect trained on all tokens (its collator overwrote the
  assistant-only labels).
- ``loss_on = "all_but_eot"``: "all" without the ``<|eot_id|>`` targets: the reference as
  it ran on Llama-3 Instruct, whose pad token was its eos ``<|eot_id|>`` and whose collator
  set every pad-id label to -100. "all" equals the reference only for a tokenizer whose pad
  token does not occur in the text.

JEPA views: Text = the last user message before the last assistant message, Code = that
assistant message. A record may carry its own views as ``"text"`` / ``"code"`` message
lists (hellaswag does): then ``text_ids`` / ``code_ids`` are those messages' contents
(joined by a blank line), while the spans still point at the user/assistant content of
the full sequence.

Bad input: no/ill-formed ``messages``, no user or no assistant message, an empty user or
assistant message, or a sample longer than ``max_len`` tokens.

The batch fields of chat/pairs batches (``with_chat_fields``, see data/batch.py):
  ``samples``: a SampleTable (the content spans of every sample, its Text/Code view ids);
  ``counts``: samples, the token kinds (full sequences, view segments, padding) and the
  next-token-equivalent tokens and pairs (the full sequences alone). The objectives add
  their own records (the LLM-JEPA indices, the STP spans) in their ``collate``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from titan_jepa.data.batch import IGNORE_INDEX, SAMPLE_COLUMNS, Batch, SampleTable
from titan_jepa.data.sample import Sample
from titan_jepa.data.sources import BadLines

__all__ = ["SAMPLE_COLUMNS", "ChatSamples", "check_messages", "with_chat_fields"]


def check_messages(obj: dict) -> str | None:
    """The reason a record is not a usable conversation, or None."""
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "no messages"
    for m in msgs:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            return "a message without a string role and content"
    roles = [m["role"] for m in msgs]
    if "assistant" not in roles:
        return "no assistant message"
    last_a = len(roles) - 1 - roles[::-1].index("assistant")
    if "user" not in roles[:last_a]:
        return "no user message before the assistant message"
    last_u = last_a - 1 - roles[:last_a][::-1].index("user")
    if not msgs[last_u]["content"].strip():
        return "empty user message"
    if not msgs[last_a]["content"].strip():
        return "empty assistant message"
    return None


def _view_text(view) -> str | None:
    if isinstance(view, str):
        return view
    if isinstance(view, list) and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in view):
        return "\n\n".join(m["content"].strip() for m in view)
    return None


class ChatSamples:
    def __init__(self, tokenizer, loss_on: str, max_len: int, bad: BadLines):
        self.tok, self.loss_on, self.max_len, self.bad = tokenizer, loss_on, max_len, bad

    def __call__(self, obj, where: str) -> Sample | None:
        """One packed-ready sample, or None (reported as bad input)."""
        reason = check_messages(obj) if isinstance(obj, dict) else "not a JSON object"
        if reason:
            self.bad.report(where, reason)
            return None
        enc = self.tok.encode_chat(obj["messages"])
        ids = enc.ids
        if len(ids) > self.max_len:
            self.bad.report(where, f"sample longer than max_sample_len ({self.max_len} tokens)")
            return None
        if self.loss_on == "all":
            labels = ids[1:] + [IGNORE_INDEX]
        elif self.loss_on == "all_but_eot":  # the reference's pad = eos = <|eot_id|>, pad labels -100
            labels = [t if t != self.tok.eot_id else IGNORE_INDEX for t in ids[1:]] + [IGNORE_INDEX]
        else:
            m = enc.loss_mask
            labels = [t if k else IGNORE_INDEX for t, k in zip(ids[1:], m[1:])] + [IGNORE_INDEX]
        text_ids, code_ids = enc.text_ids, enc.code_ids
        tv, cv = _view_text(obj.get("text")), _view_text(obj.get("code"))
        if tv is not None and cv is not None:
            text_ids, code_ids = self.tok.encode(tv.strip()), self.tok.encode(cv.strip())
        return Sample(ids=ids, labels=labels, user=tuple(enc.user_span), assistant=tuple(enc.assistant_span),
                      text_ids=text_ids, code_ids=code_ids)


def with_chat_fields(batch: Batch, rows) -> Batch:
    """``batch`` (collated from ``rows``) with its sample table and token counts (see the
    module docstring); padding rows added by collate count as padding tokens."""
    table, text_ids, code_ids = [], [], []
    full_tokens = view_tokens = ntp_pairs = 0
    for r, row in enumerate(rows):
        for seg, start, s in row.samples:
            (us, ue), (as_, ae) = s.user, s.assistant
            table.append([r, seg, start, len(s.ids), start + us, start + ue, start + as_, start + ae])
            text_ids.append(s.text_ids)
            code_ids.append(s.code_ids)
            segs = s.all_segments()
            full_tokens += sum(len(x.ids) for x in segs[:s.full_segments])
            view_tokens += sum(len(x.ids) for x in segs[s.full_segments:])
            ntp_pairs += sum(len(x.ids) * (len(x.ids) + 1) // 2 for x in segs[:s.full_segments])
    counts = replace(batch.counts, samples=len(table), full_tokens=full_tokens, view_tokens=view_tokens,
                     pad_tokens=batch.tokens.numel() - full_tokens - view_tokens,
                     ntp_tokens=full_tokens, ntp_pairs=ntp_pairs)
    samples = SampleTable(torch.tensor(table, dtype=torch.int64).reshape(-1, len(SAMPLE_COLUMNS)),
                          text_ids, code_ids)
    return replace(batch, samples=samples, counts=counts)
