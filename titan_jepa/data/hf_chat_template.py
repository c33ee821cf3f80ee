"""Hugging Face chat templates (``tokenizer.chat_template = "hf"``, or "auto" for a
vocabulary without Llama-3's header tokens) with exact token spans.

Where the template comes from (``load_hf_chat_template``): ``tokenizer.chat_template_path``
when set (a ``chat_template.jinja``, a ``tokenizer_config.json`` with a "chat_template"
field, or a ``.gguf`` file's ``tokenizer.chat_template``); else, beside ``tokenizer.path``,
``chat_template.jinja`` (where transformers 5 saves it), then ``tokenizer_config.json``.

The Jinja template (for example Llama-3.2-Instruct's, which adds a system header with
"Cutting Knowledge Date" / "Today Date" lines, or SmolLM2's ChatML) is rendered with
jinja2's sandboxed environment, set up as transformers does (trim_blocks, lstrip_blocks,
loop controls, ``raise_exception``, ``strftime_now``, a ``tojson`` filter), so the text is the
one ``apply_chat_template`` gives. ``date_string`` is passed in (``tokenizer.chat_template_date``)
so the data does not depend on the day it is tokenised.

Exact spans: the template is rendered once with each message's content replaced by a
sentinel (a private-use character pair that no template trims). The rendered text splits
at the sentinels into template pieces; the content that the template inserted is the
message's stripped (or, for templates that do not trim, raw) content, chosen by comparing
with the rendering of the real messages, which must be reproduced exactly. Template pieces
are tokenised with special-token names turned into their ids (``<|eot_id|>`` ...), contents
as ordinary text, so each message's content tokens are one span ``[start, end)``. With the
Llama-3 pre-tokeniser the pieces end in "\\n\\n" or a special token, so this concatenation
equals the tokenisation of the whole rendered string (tests/test_hf_chat_template.py checks
it); content that spells a special token's name stays text either way.

Labels: an assistant message's content and the token right after it when that is the
end-of-turn token (``<|eot_id|>``, ``<|im_end|>``) are the assistant-only targets, as in the
Llama-3 layout. Generation prompts (``generation_prompt``) are the conversation followed by
what the template adds with ``add_generation_prompt=True`` (``<|im_start|>assistant\n`` for
ChatML), tokenised the same way; a template that adds nothing there cannot prompt a model
and is refused with one line. JEPA views (``view_affixes``): the template rendered over a one-message
conversation of the view's role, i.e. what the reference's ``apply_chat_template`` of
``[message]`` gave (with Llama-3.2's template, the system header with the date lines
comes first).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from titan_jepa.data.chat_template import ChatEncoding, last_turn_spans
from titan_jepa.errors import ChatTemplateError  # noqa: F401 (raised here, imported from here too)

TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"

OPEN, CLOSE = "\ue000", "\ue001"


def _sentinel(i: int) -> str:
    return f"{OPEN}{i}{CLOSE}"


def token_text(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config files
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_tokenizer_config(path: str | Path, need_template: bool = True) -> tuple[str, dict]:
    """(template source, tokenizer_config dict) of a ``tokenizer_config.json``."""
    path = Path(path)
    if not path.is_file():
        raise ChatTemplateError(f"tokenizer.chat_template = 'hf' reads '{path}', which does not exist; "
                                f"set tokenizer.chat_template_path to the model's tokenizer_config.json")
    try:
        conf = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ChatTemplateError(f"{path}: not valid JSON ({e})") from None
    template = conf.get("chat_template") if isinstance(conf, dict) else None
    if isinstance(template, list):  # named templates: take "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if (not isinstance(template, str) or not template.strip()) and need_template:
        raise ChatTemplateError(f"{path} has no \"chat_template\" string; use tokenizer.chat_template = "
                                f"'llama3' or point tokenizer.chat_template_path at an Instruct model's config")
    return template, conf


def read_gguf_template(path: Path) -> str:
    """The ``tokenizer.chat_template`` string of a GGUF file (needs the gguf package)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ChatTemplateError(f"reading the chat template of '{path}' needs the gguf package: "
                                f"pip install 'titan-jepa[gguf]'") from None
    try:
        field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    except (OSError, ValueError) as e:
        raise ChatTemplateError(f"{path}: not a readable GGUF file ({e})") from None
    if field is None:
        raise ChatTemplateError(f"{path} has no tokenizer.chat_template; point tokenizer.chat_template_path "
                                f"at the model's chat_template.jinja or tokenizer_config.json")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def find_template(tok_cfg) -> Path | None:
    """The file the template is read from (see the module docstring), or None."""
    if tok_cfg.chat_template_path:
        return Path(tok_cfg.chat_template_path)
    folder = Path(tok_cfg.path).parent
    if (folder / TEMPLATE_FILE).is_file():
        return folder / TEMPLATE_FILE
    conf = folder / CONFIG_FILE
    try:
        if conf.is_file() and json.loads(conf.read_text()).get("chat_template"):
            return conf
    except (ValueError, UnicodeDecodeError, AttributeError):
        return conf  # read_template reports it
    return None


def read_template(path: Path) -> tuple[str, dict]:
    """(template source, tokenizer_config dict or {}) of a template file of any kind."""
    if not path.is_file():
        raise ChatTemplateError(f"the chat template file '{path}' does not exist; set tokenizer.chat_template_path "
                                f"to the model's chat_template.jinja or tokenizer_config.json")
    if path.suffix == ".gguf":
        return read_gguf_template(path), {}
    if path.suffix == ".jinja":
        source = path.read_text(encoding="utf-8", errors="replace")
        if not source.strip():
            raise ChatTemplateError(f"{path} is empty; point tokenizer.chat_template_path at the model's template")
        conf_file = path.parent / CONFIG_FILE
        return source, (read_tokenizer_config(conf_file, need_template=False)[1] if conf_file.is_file() else {})
    return read_tokenizer_config(path)


class HFChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, date_string: str, where: str = "template"):
        self.source = source
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ChatTemplateError(f"{where}: the chat template refused the conversation: {message}")

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                              sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{where}: the chat template is not valid Jinja ({e})") from None
        self.where = where
        self.variables = {"bos_token": bos_token, "eos_token": eos_token, "date_string": date_string}
        self._affixes: dict[str, tuple[list[int], list[int]]] = {}

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The template's text, as transformers' ``apply_chat_template(tokenize=False)`` gives."""
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    **self.variables)

    def _pieces(self, messages: list[dict]) -> tuple[list[str], list[int], list[str]]:
        """(template pieces, message index of each content between them, the contents)."""
        marked = [{**m, "content": _sentinel(i)} for i, m in enumerate(messages)]
        text = self.render(marked)
        pieces, order, rest = [], [], text
        while OPEN in rest:
            head, _, tail = rest.partition(OPEN)
            idx, close, rest = tail.partition(CLOSE)
            if not close or not idx.isdigit():
                raise ChatTemplateError(f"{self.where}: the chat template changes message contents; "
                                        f"use tokenizer.chat_template = 'llama3'")
            pieces.append(head)
            order.append(int(idx))
        pieces.append(rest)
        if sorted(order) != list(range(len(messages))):
            raise ChatTemplateError(f"{self.where}: the chat template does not render every message's content "
                                    f"exactly once; use tokenizer.chat_template = 'llama3'")
        real = self.render(messages)
        for transform in (str.strip, lambda s: s):
            contents = [transform(messages[i]["content"]) for i in order]
            joined = "".join(p + c for p, c in zip(pieces, contents)) + pieces[-1]
            if joined == real:
                return pieces, order, contents
        raise ChatTemplateError(f"{self.where}: the chat template changes message contents beyond stripping "
                                f"them; use tokenizer.chat_template = 'llama3'")

    def encode(self, tok, messages: list[dict]) -> ChatEncoding:
        """The same fields as data/chat_template.py's Llama-3 layout (see ChatEncoding)."""
        pieces, order, contents = self._pieces(messages)
        ids: list[int] = []
        mask: list[int] = []
        spans: list[tuple[str, int, int] | None] = [None] * len(messages)
        prev_assistant = False
        for n, piece in enumerate(pieces):
            piece_ids = tok.encode(piece, allow_special=True)
            if prev_assistant and piece_ids and piece_ids[0] == tok.eot_id:
                mask += [1] + [0] * (len(piece_ids) - 1)  # the assistant turn's end is a target
            else:
                mask += [0] * len(piece_ids)
            ids += piece_ids
            if n == len(order):
                break
            i = order[n]
            role = messages[i]["role"]
            body = tok.encode(contents[n])
            spans[i] = (role, len(ids), len(ids) + len(body))
            ids += body
            mask += [1 if role == "assistant" else 0] * len(body)
            prev_assistant = role == "assistant"
        enc = ChatEncoding(ids=ids, loss_mask=mask, spans=[s for s in spans if s is not None])
        return last_turn_spans(enc)

    def generation_prompt(self, tok, messages: list[dict]) -> list[int]:
        """The conversation's ids followed by the template's generation prompt, as
        ``apply_chat_template(messages, add_generation_prompt=True)`` tokenises it."""
        plain = self.render(messages)
        prompted = self.render(messages, add_generation_prompt=True)
        if not prompted.startswith(plain) or prompted == plain:
            raise ChatTemplateError(f"{self.where}: the chat template renders no generation prompt "
                                    f"(add_generation_prompt adds nothing after the conversation), so it "
                                    f"cannot prompt the model; use the model's chat template")
        return self.encode(tok, messages).ids + tok.encode(prompted[len(plain):], allow_special=True)

    def view_affixes(self, tok, role: str) -> tuple[list[int], list[int]]:
        """(ids before, ids after) a view's content: the template over [{role, content}]."""
        if role not in self._affixes:
            pieces, _, _ = self._pieces([{"role": role, "content": "x"}])
            self._affixes[role] = (tok.encode(pieces[0], allow_special=True),
                                   tok.encode(pieces[1], allow_special=True))
        return self._affixes[role]


def load_hf_chat_template(tok_cfg, tok, path: Path | None = None) -> HFChatTemplate:
    """The template of ``tok_cfg`` (the [tokenizer] section) for tokenizer ``tok``."""
    path = path or find_template(tok_cfg)
    if path is None:
        raise ChatTemplateError(f"no chat template beside '{tok_cfg.path}' ({TEMPLATE_FILE} or {CONFIG_FILE} "
                                f"with a \"chat_template\"); set tokenizer.chat_template_path to the model's template")
    source, conf = read_template(path)
    bos = token_text(conf.get("bos_token")) or tok.decode([tok.bos_id])
    eos = token_text(conf.get("eos_token")) or tok.decode([tok.eos_id])
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise ChatTemplateError("tokenizer.chat_template = 'hf' needs jinja2: pip install 'titan-jepa[hf]'") from None
    return HFChatTemplate(source, bos, eos, tok_cfg.chat_template_date, where=str(path))


LLAMA3_HEADERS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def attach_chat_template(tok, tok_cfg):
    """Give ``tok`` the configured chat template: ``tok.hf_chat_template`` (None: the Llama-3
    layout). "auto" takes the Llama-3 layout when the vocabulary has its header tokens, else
    the model's own template; a tokenizer with neither gets ``tok.chat_error``, raised when a
    conversation is encoded (text-only runs need no template)."""
    tok.hf_chat_template, tok.chat_error = None, None
    mode = getattr(tok_cfg, "chat_template", "llama3")
    has_llama3 = all(name in tok.special_tokens for name in LLAMA3_HEADERS)
    if mode == "hf":
        tok.hf_chat_template = load_hf_chat_template(tok_cfg, tok)
    elif mode == "llama3" and not has_llama3:
        tok.chat_error = (f"tokenizer.chat_template = 'llama3' needs the Llama-3 header tokens, which "
                          f"'{tok_cfg.path}' lacks; use tokenizer.chat_template = 'auto' (the model's own template)")
    elif mode == "auto" and not has_llama3:
        path = find_template(tok_cfg)
        if path is not None:
            tok.hf_chat_template = load_hf_chat_template(tok_cfg, tok, path)
        else:
            tok.chat_error = (f"'{tok_cfg.path}' has no Llama-3 header tokens and no chat template beside it "
                              f"({TEMPLATE_FILE} or {CONFIG_FILE}); set tokenizer.chat_template_path to the "
                              f"model's template")
    return tok
