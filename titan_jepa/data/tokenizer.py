"""Tokenizers with one interface: Llama-3 ``tokenizer.model`` (tiktoken) or HF ``tokenizer.json``.

Both expose ``encode(text, bos=False, eos=False)``, ``decode(ids)``, ``vocab_size`` (with
specials), ``bos_id``, ``eos_id`` (<|end_of_text|>), ``eot_id`` (<|eot_id|>), ``pad_id``,
``special_tokens`` (name -> id), ``encode_chat(messages)`` (the Llama-3 chat template, or with
``tokenizer.chat_template = "hf"`` a tokenizer_config.json's, data/hf_chat_template.py),
``predictor_token_ids(k)`` and ``mask_id`` (the JEPA tokens).

Text is always encoded as ordinary text: a special token's name inside a document is not
turned into the special id unless ``allow_special=True`` is passed.

JEPA tokens (TikTokenizer): they reuse Llama-3's reserved special tokens, so a pretrained
Llama-3 checkpoint needs no embedding resize::

    <|predictor_k|>  = <|reserved_special_token_{k+1}|>   k = 1..16  (reserved 2..17)
    <|mask|>         = <|reserved_special_token_18|>

Ids by position, not by name: an HF ``tokenizer.json`` in the Llama-3 layout (256 special
tokens right after the base vocabulary, the first one ``<|begin_of_text|>``) gets Meta's
names by id position (``llama3_special_names``), whatever its file calls them: Llama-3.0's
``tokenizer.json`` names 128004/128005/128008/128010 ``<|reserved_special_token_2..5|>``
where Meta's ``tokenizer.model`` (and Llama-3.1's json) has ``<|finetune_right_pad_id|>``,
``<|step_id|>``, ``<|eom_id|>``, ``<|python_tag|>``, and numbers the reserved tokens after
them differently. So both paths give the same ids for every special and JEPA token (pad
= 128004 included) on any Llama-3 release; decoding a special id on the hf path still
prints the file's own name. Any other HF tokenizer resolves specials by name: tokens with
the JEPA names when it has them, else the reserved names above, else a clear error when
they are asked for.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from titan_jepa.data.chat_template import ChatEncoding, encode_chat
from titan_jepa.errors import TokenizerError  # noqa: F401 (raised here, imported from here)

# Llama-3's pre-tokenisation pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256
MAX_PREDICTORS = 16


def llama3_special_names() -> list[str]:
    """Meta's 256 special token names, in id order after the base vocabulary."""
    names = [
        "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
        "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
        "<|python_tag|>",
    ]
    names += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + NUM_SPECIAL - len(names))]
    return names


def jepa_aliases() -> dict[str, str]:
    """JEPA token name -> the Llama-3 reserved special token it is stored as."""
    alias = {f"<|predictor_{k}|>": f"<|reserved_special_token_{k + 1}|>" for k in range(1, MAX_PREDICTORS + 1)}
    alias["<|mask|>"] = f"<|reserved_special_token_{MAX_PREDICTORS + 2}|>"
    return alias


class _Base:
    special_tokens: dict[str, int]
    bos_id: int
    eos_id: int
    eot_id: int
    pad_id: int
    vocab_size: int

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def _finish_specials(self) -> None:
        """Add JEPA aliases to special_tokens and build the special-name splitter."""
        for alias, real in jepa_aliases().items():
            if alias not in self.special_tokens and real in self.special_tokens:
                self.special_tokens[alias] = self.special_tokens[real]
        names = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None

    def encode(self, text: str, bos: bool = False, eos: bool = False, *, allow_special: bool = False) -> list[int]:
        if allow_special and self._special_re is not None:
            ids = []
            for i, piece in enumerate(self._special_re.split(text)):
                if i % 2:
                    ids.append(self.special_tokens[piece])
                elif piece:
                    ids += self._encode_ordinary(piece)
        else:
            ids = self._encode_ordinary(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def encode_chat(self, messages: list[dict]) -> ChatEncoding:
        return encode_chat(self, messages)

    def predictor_token_ids(self, k: int) -> list[int]:
        if not 0 <= k <= MAX_PREDICTORS:
            raise ValueError(f"k = {k} predictor tokens: at most {MAX_PREDICTORS} are defined")
        try:
            return [self.special_tokens[f"<|predictor_{i}|>"] for i in range(1, k + 1)]
        except KeyError as e:
            raise TokenizerError(f"the tokenizer has no {e.args[0]} token (nor its reserved alias)") from None

    @property
    def mask_id(self) -> int:
        if "<|mask|>" not in self.special_tokens:
            raise TokenizerError("the tokenizer has no <|mask|> token (nor its reserved alias)")
        return self.special_tokens["<|mask|>"]


def load_llama3_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a Llama-3 ``tokenizer.model``: one ``base64(token bytes) rank`` per line."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
            except ValueError:
                raise TokenizerError(f"{path}:{n}: not a 'base64 rank' line of a Llama-3 tokenizer.model") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1}")
    return ranks


def write_llama3_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    lines = [f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1])]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(lines))


class TikTokenizer(_Base):
    """Llama-3 format ``tokenizer.model`` read with tiktoken; 256 specials after the base vocab."""

    def __init__(self, path: str | Path):
        import tiktoken

        ranks = load_llama3_ranks(path)
        n = len(ranks)
        self.special_tokens = {name: n + i for i, name in enumerate(llama3_special_names())}
        self._enc = tiktoken.Encoding(
            name=Path(path).name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
            special_tokens=dict(self.special_tokens),
        )
        self.num_base_tokens = n
        self.vocab_size = n + NUM_SPECIAL
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        self._finish_specials()

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self._enc.decode(list(ids))


class HFTokenizer(_Base):
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library); specials by position in
    the Llama-3 layout, else by name (see the module docstring)."""

    BOS = ("<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>")
    EOS = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>")
    EOT = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
    PAD = ("<|finetune_right_pad_id|>", "<pad>", "<|pad|>")

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
        self._tok.encode_special_tokens = True  # special names in text stay text
        added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self.num_base_tokens = n = self._tok.get_vocab_size(with_added_tokens=False)
        self.llama3_layout = added.get(n) == "<|begin_of_text|>" and all(n + i in added for i in range(NUM_SPECIAL))
        if self.llama3_layout:  # by position: Meta's names, whatever this file calls them
            self.special_tokens = {name: n + i for i, name in enumerate(llama3_special_names())}
        else:
            self.special_tokens = {c: i for i, c in added.items()}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        eos = self._find(self.EOS)
        if eos is None:
            raise TokenizerError(f"{path}: no end-of-text token (looked for {', '.join(self.EOS)})")
        self.eos_id = eos
        bos = self._find(self.BOS)
        self.bos_id = eos if bos is None else bos
        eot = self._find(self.EOT)
        self.eot_id = eos if eot is None else eot
        pad = self._find(self.PAD)
        self.pad_id = eos if pad is None else pad
        self._finish_specials()

    def _find(self, names) -> int | None:
        vocab = self.special_tokens if self.llama3_layout else self._tok.get_vocab(with_added_tokens=True)
        for n in names:
            if n in vocab:
                return vocab[n]
        return None

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)


def build_tokenizer(cfg) -> TikTokenizer | HFTokenizer:
    """``cfg``: the ``[tokenizer]`` config section (kind, path)."""
    path = Path(cfg.path)
    if not path.is_file():
        hint = (
            "train one with: python tools/make_demo_data.py --out demo_data && "
            "python tools/train_tokenizer.py --input demo_data --out assets/tokenizer/tokenizer.model"
            if cfg.kind == "tiktoken" else "point tokenizer.path at a Hugging Face tokenizer.json"
        )
        raise TokenizerError(f"tokenizer.path '{path}' does not exist; {hint}")
    from titan_jepa.data.hf_chat_template import attach_chat_template

    # tokenizer.chat_template = "hf": encode_chat renders the tokenizer_config.json's template
    return attach_chat_template(TikTokenizer(path) if cfg.kind == "tiktoken" else HFTokenizer(path), cfg)
