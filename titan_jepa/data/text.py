"""Pretraining documents (``data.kind = "text"``): one record -> <|begin_of_text|> tokens <|end_of_text|>.

A record is a dict with the text in ``data.text_field`` (.jsonl, .parquet, hf:) or a .txt
paragraph (a str). Missing/non-string fields and empty (whitespace-only) texts are bad input.
Packing into rows is ``packing.DocPacker``.
"""

from __future__ import annotations

from titan_jepa.data.sources import BadLines


class TextDocs:
    def __init__(self, tokenizer, text_field: str, bad: BadLines):
        self.tok, self.field, self.bad = tokenizer, text_field, bad

    def __call__(self, obj, where: str) -> list[int] | None:
        """Token ids of one document, or None (reported to the bad-input policy)."""
        if isinstance(obj, str):
            text = obj
        else:
            text = obj.get(self.field)
            if not isinstance(text, str):
                self.bad.report(where, f"no text field '{self.field}'" if text is None
                                else f"text field '{self.field}' is not a string")
                return None
        if not text.strip():
            self.bad.report(where, "empty text")
            return None
        return self.tok.encode(text, bos=True, eos=True)
