"""LLM-JEPA views: extra segments packed next to a chat sample's full sequence.

For each sample kept by the JEPA-loss dropout (probability ``jepa.jepa_ratio``; a dropped
sample gets no view segments and costs no extra tokens), the sample becomes consecutive
segments of one row:

``views = "separate"`` (the reference's three encodings, here in one row)::

    [full: <bos> system user assistant]  [Text: <bos> user-header text pred_1..pred_k <eot>]
    [Code: <bos> assistant-header code <eot>]

With ``tokenizer.chat_template = "hf"`` a view is the template's rendering of a one-message
conversation of its role (Llama-3.2-Instruct's adds its system header with the dates first),
as the reference's ``apply_chat_template([message])`` gave; the indices follow the same rules.

``views = "shared_prefix"``: Text is not re-encoded. The k predictor tokens form a small
segment whose positions continue after the user content of the full sequence and which
also attends to that prefix (system + user, through ``context_segment``/``context_len``),
so Pred(Enc(Text)) reads the full sequence's own states; Code stays a separate segment.
With k = 0 the Text embedding is the full sequence's last user content token and only the
Code segment is added.

``view_template = "plain"`` drops the chat header and <bos>/<eot> from the views (paraphrase
pretraining). ``front_pred`` puts the predictor tokens before the Text content;
``reverse_pred`` appends them to Code and predicts Text from it.

Embedding indices (offsets from the sample's first token, recorded in ``sample.marks["jepa"]``):
the last content token of a view, or its last predictor token when it has them (never a
fixed offset from a padded end). ``last_token < 0`` instead takes ``len(view) + last_token``
as the reference did (-2 for Llama-3 chat views, -1 for plain ones).

Which samples keep their views is decided by a hash of (seed, slot, sample counter), so the
decision needs only the counter as state and a resumed loader makes the same choices.
"""

from __future__ import annotations

import random

from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat_template import view_affixes
from titan_jepa.data.sample import Sample, Segment


class JepaViews:
    def __init__(self, samples, jepa_cfg, tokenizer, seq_len: int, seed: int, slot: int, bad):
        self.samples, self.cfg, self.tok = samples, jepa_cfg, tokenizer
        self.seq_len, self.seed, self.slot, self.bad = seq_len, seed, slot, bad
        self.preds = tokenizer.predictor_token_ids(jepa_cfg.k) if jepa_cfg.k > 0 else []
        # (ids before, ids after) a view's content: <bos> + header and <|eot_id|> in the
        # Llama-3 layout, or the tokenizer.chat_template = "hf" template's own rendering
        self._affixes = {role: view_affixes(tokenizer, role) for role in ("user", "assistant")}
        self.counter = 0

    # -- state (the counter is all the randomness there is) ----------------------------
    def state_dict(self) -> dict:
        return {"counter": self.counter}

    def load_state_dict(self, sd: dict) -> None:
        self.counter = sd["counter"]

    def _keep(self) -> bool:
        ratio = self.cfg.jepa_ratio
        self.counter += 1
        if ratio >= 1.0:
            return True
        return random.Random(f"{self.seed}:{self.slot}:{self.counter}").random() < ratio

    def _view(self, role: str, content: list[int]) -> tuple[list[int], int]:
        """(view tokens, index of its embedding token)."""
        if self.cfg.view_template == "plain":
            ids, last = list(content), len(content) - 1
        else:
            head, tail = self._affixes[role]
            ids, last = head + content + tail, len(head) + len(content) - 1
        if self.cfg.last_token < 0:
            last = len(ids) + self.cfg.last_token
        return ids, last

    def __call__(self, obj, where: str) -> Sample | None:
        sample = self.samples(obj, where)
        if sample is None or not self._keep():
            return sample
        full, labels = sample.ids, sample.labels
        c = self.cfg
        if sample.full_segments == 2:  # a paraphrase pair (data/pairs.py): A and B are both full
            return self._pair_views(sample, where)
        if c.views == "shared_prefix":
            user_end = sample.user[1]
            if self.preds:
                # predictor tokens continue the full sequence right after the user content
                segments = [Segment(full, labels),
                            Segment(self.preds, [IGNORE_INDEX] * len(self.preds), user_end, 0, user_end)]
                pred_at = len(full) + len(self.preds) - 1
            else:
                segments = [Segment(full, labels)]
                pred_at = user_end - 1
            code, code_last = self._view("assistant", sample.code_ids)
            target_at = sum(len(s.ids) for s in segments) + code_last
            segments.append(Segment(code, [IGNORE_INDEX] * len(code)))
        else:
            text_ids, code_ids = sample.text_ids, sample.code_ids
            if c.reverse_pred:
                code_ids = code_ids + self.preds
            elif c.front_pred:
                text_ids = self.preds + text_ids
            else:
                text_ids = text_ids + self.preds
            text, text_last = self._view("user", text_ids)
            code, code_last = self._view("assistant", code_ids)
            segments = [Segment(full, labels), Segment(text, [IGNORE_INDEX] * len(text)),
                        Segment(code, [IGNORE_INDEX] * len(code))]
            text_at, code_at = len(full) + text_last, len(full) + len(text) + code_last
            pred_at, target_at = (code_at, text_at) if c.reverse_pred else (text_at, code_at)
        return self._finish(sample, segments, pred_at, target_at, where)

    def _pair_views(self, sample: Sample, where: str) -> Sample | None:
        """Text is read in A (through predictor tokens), Code at B's last content token."""
        a, b = (s.ids for s in sample.segments)
        a_end = len(a) - 1  # A's <|end_of_text|>: the predictors take its place
        segments = list(sample.segments)
        if self.cfg.views == "shared_prefix":
            if self.preds:
                segments.append(Segment(self.preds, [IGNORE_INDEX] * len(self.preds), a_end, 0, a_end))
                pred_at = len(a) + len(b) + len(self.preds) - 1
            else:
                pred_at = a_end - 1
        else:
            text = a[:a_end] + self.preds
            segments.append(Segment(text, [IGNORE_INDEX] * len(text)))
            pred_at = len(a) + len(b) + len(text) - 1
        target_at = len(a) + len(b) - 2  # B's last content token
        return self._finish(sample, segments, pred_at, target_at, where)

    def _finish(self, sample, segments, pred_at, target_at, where) -> Sample | None:
        total = sum(len(s.ids) for s in segments)
        if total > self.seq_len:
            self.bad.report(where, f"sample with its JEPA views longer than training.seq_len ({self.seq_len})")
            return None
        sample.segments = segments
        sample.marks["jepa"] = [pred_at, target_at]
        return sample
