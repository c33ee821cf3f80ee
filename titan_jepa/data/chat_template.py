"""The Llama-3 chat template, computed on token ids so that every span is exact.

Layout of one conversation::

    <|begin_of_text|>
    <|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>   (per message)

Each message's content is stripped (as Meta's reference and the Hugging Face template do)
and tokenised on its own, so the content tokens of every message form one contiguous span
``[start, end)`` of ``ids``. "\\n\\n" is tokenised separately as well; with the Llama-3
pre-tokeniser this gives the same ids as tokenising the joined string.

``tokenizer.chat_template = "hf"`` (or "auto" for a vocabulary without these header tokens)
replaces this layout by the model's Jinja template (data/hf_chat_template.py; the tokenizer
then carries it as ``hf_chat_template``): ``encode_chat``, ``generation_prompt`` and
``view_affixes`` dispatch to it and return the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ChatEncoding:
    """One templated conversation.

    ids:            the full templated sequence (starts with <|begin_of_text|>).
    loss_mask:      1 on the tokens of every assistant message's content and its <|eot_id|>
                    (the targets of an assistant-only loss), else 0. Same length as ids.
    spans:          (role, start, end) of each message's content tokens inside ids.
    user_span:      (start, end) of the last user message before the last assistant message.
    assistant_span: (start, end) of the last assistant message's content.
    text_ids:       the Text view's content tokens (= ids[user_span] unless the data line
                    carries its own ``text`` view, see data/chat.py).
    code_ids:       the Code view's content tokens (= ids[assistant_span] unless overridden).
    """

    ids: list[int]
    loss_mask: list[int]
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    user_span: tuple[int, int] = (0, 0)
    assistant_span: tuple[int, int] = (0, 0)
    text_ids: list[int] = field(default_factory=list)
    code_ids: list[int] = field(default_factory=list)


def encode_chat(tok, messages: list[dict]) -> ChatEncoding:
    """Template ``messages`` ([{"role", "content"}, ...]) with tokenizer ``tok``.

    ``tok`` provides ``encode``, ``bos_id``, ``eot_id`` and ``special_tokens``. When a
    header special token is missing (some HF tokenizers), its literal text is encoded.
    """
    hf = _template(tok)
    if hf is not None:
        return hf.encode(tok, messages)
    start_h, end_h = _header_tokens(tok)
    nl2 = tok.encode("\n\n")
    ids: list[int] = [tok.bos_id]
    mask: list[int] = [0]
    spans: list[tuple[str, int, int]] = []
    for m in messages:
        role, content = m["role"], m["content"].strip()
        head = start_h + tok.encode(role) + end_h + nl2
        ids += head
        mask += [0] * len(head)
        body = tok.encode(content) + [tok.eot_id]
        start = len(ids)
        ids += body
        mask += [1 if role == "assistant" else 0] * len(body)
        spans.append((role, start, start + len(body) - 1))
    return last_turn_spans(ChatEncoding(ids=ids, loss_mask=mask, spans=spans))


def _template(tok):
    """The tokenizer's HF template (None: the Llama-3 layout); its chat_error if it has neither."""
    if getattr(tok, "chat_error", None):
        from titan_jepa.errors import TokenizerError

        raise TokenizerError(tok.chat_error)
    return getattr(tok, "hf_chat_template", None)


def generation_prompt(tok, messages: list[dict]) -> list[int]:
    """The prompt that asks the model for the last assistant message: the template over
    the messages before it (all of them when the last is not an assistant message), then
    the template's generation prompt (the Llama-3 layout: the assistant header)."""
    context = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    hf = _template(tok)
    if hf is not None:
        return hf.generation_prompt(tok, context)
    start_h, end_h = _header_tokens(tok)
    return encode_chat(tok, context).ids + start_h + tok.encode("assistant") + end_h + tok.encode("\n\n")


def _header_tokens(tok) -> tuple[list[int], list[int]]:
    sp = tok.special_tokens

    def special(name: str) -> list[int]:
        return [sp[name]] if name in sp else tok.encode(name)

    return special("<|start_header_id|>"), special("<|end_header_id|>")


def view_affixes(tok, role: str) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the content of a JEPA view of ``role`` (data/views.py):
    <bos> + the role's header, and <|eot_id|>; or the HF template's one-message rendering."""
    hf = _template(tok)
    if hf is not None:
        return hf.view_affixes(tok, role)
    start_h, end_h = _header_tokens(tok)
    return [tok.bos_id, *start_h, *tok.encode(role), *end_h, *tok.encode("\n\n")], [tok.eot_id]


def last_turn_spans(enc: ChatEncoding) -> ChatEncoding:
    """Fill user_span / assistant_span / text_ids / code_ids from ``enc.spans``."""
    ids, spans = enc.ids, enc.spans
    last_a = max((i for i, s in enumerate(spans) if s[0] == "assistant"), default=None)
    if last_a is not None:
        enc.assistant_span = spans[last_a][1:]
        last_u = max((i for i, s in enumerate(spans[:last_a]) if s[0] == "user"), default=None)
        if last_u is not None:
            enc.user_span = spans[last_u][1:]
    enc.text_ids = ids[enc.user_span[0]:enc.user_span[1]]
    enc.code_ids = ids[enc.assistant_span[0]:enc.assistant_span[1]]
    return enc
