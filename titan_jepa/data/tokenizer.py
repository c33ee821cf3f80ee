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
prints the file's own name. Any other HF tokenizer (SmolLM2's ChatML byte BPE, say) takes
its bos/eos/pad tokens from the ``tokenizer_config.json`` beside it (else by name), its
stop tokens from ``generation_config.json`` (eos_token_id) when present, and resolves the
JEPA tokens by name.

Tokens the method needs (``build_tokenizer(cfg)`` with the whole JobConfig: its objectives'
``special_tokens``, data/special_tokens.py): ``<|predictor_1..k|>`` (JEPA, k >= 1) and ``<|mask|>`` (STP's mask
ablation) come from the reserved slots above where the vocabulary has them; otherwise
``tokenizer.add_tokens = "auto"`` appends them as new special tokens (ids from the current
vocabulary size on, in that order). When the pad token also occurs in text (it is the
bos, eos, end-of-turn or a stop token: SmolLM2's pad is ``<|im_end|>``), ``<|pad|>`` is
appended too, so that an exported model has a pad token that no sample contains. (This
stack never compares labels with the pad id: padding is a segment of its own with ignored
labels, so a clashing pad costs nothing while training; the dedicated token is for the
models it exports.) ``added_tokens`` lists what was appended; the model's vocabulary grows
to hold them (model_config.py) and the new embedding rows start at the mean of the others
(weights.py). ``tokens_record()`` is what a checkpoint stores to rebuild the same ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

from titan_jepa.data.chat_template import ChatEncoding, encode_chat
from titan_jepa.data.hf_chat_template import token_text
from titan_jepa.data.special_tokens import MASK_TOKEN, MAX_PREDICTORS, PAD_TOKEN, jepa_aliases, predictor_names  # noqa: F401
from titan_jepa.errors import TokenizerError  # noqa: F401 (raised here, imported from here)

# Llama-3's pre-tokenisation pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_SPECIAL = 256


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


class _Base:
    special_tokens: dict[str, int]
    bos_id: int
    eos_id: int
    eot_id: int
    pad_id: int
    vocab_size: int
    path: Path
    kind: str
    # tokens this stack appended (name -> id, in id order), the ids generation may stop on
    added_tokens: dict[str, int]
    stop_ids: set[int]

    @property
    def base_vocab_size(self) -> int:
        """The size of the vocabulary before ``added_tokens`` (generation never emits those)."""
        return min(self.added_tokens.values(), default=self.vocab_size)

    def pad_in_text(self) -> bool:
        """Whether the pad token is also a token of the text (bos, eos, end of turn, a stop)."""
        return self.pad_id in {self.bos_id, self.eos_id, self.eot_id, *self.stop_ids}

    def add_special_tokens(self, names: list[str]) -> None:
        """Append ``names`` (not yet in the vocabulary) as special tokens, ids in order."""
        raise NotImplementedError

    def tokens_record(self) -> dict:
        """What a checkpoint stores about this tokenizer: its file and hash, the special ids
        and the tokens this stack appended (``apply_tokens_record`` replays them)."""
        return {"kind": self.kind, "path": str(Path(self.path).resolve()), "sha256": file_sha256(self.path),
                "vocab_size": self.vocab_size, "added": dict(self.added_tokens), "bos_id": self.bos_id,
                "eos_id": self.eos_id, "eot_id": self.eot_id, "pad_id": self.pad_id,
                "stop_ids": sorted(self.stop_ids)}

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def _finish_specials(self) -> None:
        """Add JEPA aliases to special_tokens and build the special-name splitter."""
        for alias, real in jepa_aliases().items():
            if alias not in self.special_tokens and real in self.special_tokens:
                self.special_tokens[alias] = self.special_tokens[real]
        self._special_splitter()

    def _special_splitter(self) -> None:
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
            raise TokenizerError(f"the tokenizer has no {e.args[0]} token (nor a reserved slot for it); "
                                 f"set tokenizer.add_tokens = 'auto' to add it") from None

    @property
    def mask_id(self) -> int:
        if MASK_TOKEN not in self.special_tokens:
            raise TokenizerError(f"the tokenizer has no {MASK_TOKEN} token (nor a reserved slot for it); "
                                 f"set tokenizer.add_tokens = 'auto' to add it")
        return self.special_tokens[MASK_TOKEN]


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        self.path, self.kind, self.added_tokens = Path(path), "tiktoken", {}
        self.stop_ids = {self.eot_id, self.eos_id}
        self._finish_specials()

    def add_special_tokens(self, names: list[str]) -> None:
        if names:  # never needed: the 256 specials hold every JEPA token and a free pad
            raise TokenizerError(f"a Llama-3 tokenizer.model cannot take new tokens ({', '.join(names)}); "
                                 f"use its reserved tokens")

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids) -> str:
        return self._enc.decode(list(ids))


class HFTokenizer(_Base):
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library); specials by position in
    the Llama-3 layout, else from the ``tokenizer_config.json`` beside it or by name (see the
    module docstring)."""

    BOS = ("<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>")
    EOS = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>")
    EOT = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>")
    PAD = ("<|finetune_right_pad_id|>", "<pad>", PAD_TOKEN)

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
        self._tok.encode_special_tokens = True  # special names in text stay text
        self.path, self.kind, self.added_tokens = Path(path), "hf", {}
        added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self.num_base_tokens = n = self._tok.get_vocab_size(with_added_tokens=False)
        self.llama3_layout = added.get(n) == "<|begin_of_text|>" and all(n + i in added for i in range(NUM_SPECIAL))
        if self.llama3_layout:  # by position: Meta's names, whatever this file calls them
            self.special_tokens = {name: n + i for i, name in enumerate(llama3_special_names())}
        else:
            self.special_tokens = {c: i for i, c in added.items()}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        # the model's own choices (tokenizer_config.json) win over names, but in the Llama-3
        # layout, whose ids are known by position
        conf = {} if self.llama3_layout else _read_json(Path(path).parent / "tokenizer_config.json")
        eos = self._configured(conf, "eos_token", self.EOS)
        if eos is None:
            raise TokenizerError(f"{path}: no end-of-text token (looked for {', '.join(self.EOS)})")
        self.eos_id = eos
        self.bos_id = self._configured(conf, "bos_token", self.BOS, default=eos)
        self.eot_id = self._configured({}, "", self.EOT, default=eos)
        self.pad_id = self._configured(conf, "pad_token", self.PAD, default=eos)
        self.stop_ids = {self.eot_id, self.eos_id}
        gen = _read_json(Path(path).parent / "generation_config.json").get("eos_token_id")
        for i in gen if isinstance(gen, list) else [gen]:
            if isinstance(i, int) and 0 <= i < self.vocab_size:
                self.stop_ids.add(i)
        self._finish_specials()

    def _configured(self, conf: dict, key: str, names, default: int | None = None) -> int | None:
        """The id of the tokenizer_config.json's ``key`` token, else of the first of ``names``."""
        text = token_text(conf.get(key)) if key else None
        if text is not None:
            i = self._tok.token_to_id(text)
            if i is not None:
                return i
        found = self._find(names)
        return default if found is None else found

    def add_special_tokens(self, names: list[str]) -> None:
        from tokenizers import AddedToken

        for name in names:
            if name in self.special_tokens or self._tok.token_to_id(name) is not None:
                raise TokenizerError(f"{self.path}: cannot add {name}: the vocabulary already has it")
            self._tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
            self.special_tokens[name] = self.added_tokens[name] = self._tok.token_to_id(name)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._special_splitter()

    # files of a Hugging Face folder that describe the tokenizer (copied on export)
    SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                  "generation_config.json")

    def save_pretrained(self, folder: str | Path) -> list[str]:
        """Write this tokenizer into a Hugging Face model folder: tokenizer.json with the
        added tokens, and the tokenizer_config.json (pad_token set to this pad),
        chat_template.jinja and generation_config.json found beside the original file.
        Returns the file names written."""
        folder, src = Path(folder), self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        written = ["tokenizer.json"]
        for name in self.SIDE_FILES:
            if (src / name).is_file() and src.resolve() != folder.resolve():
                (folder / name).write_bytes((src / name).read_bytes())
                written.append(name)
        conf = _read_json(folder / "tokenizer_config.json")
        conf["pad_token"] = self._tok.id_to_token(self.pad_id)
        (folder / "tokenizer_config.json").write_text(json.dumps(conf, indent=2) + "\n")
        if "tokenizer_config.json" not in written:
            written.append("tokenizer_config.json")
        return written

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


def _read_json(path: Path) -> dict:
    """A JSON object file, or {} when it is absent or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def add_method_tokens(tok, names: list[str], mode: str) -> None:
    """Give ``tok`` the special tokens ``names`` (reserved slots first, else appended) and,
    when its pad token occurs in text, a ``<|pad|>`` of its own (``tokenizer.add_tokens =
    "auto"``); with "never" a missing token is an error and nothing is appended."""
    missing = [n for n in names if n not in tok.special_tokens]
    if mode == "never":
        if missing:
            raise TokenizerError(f"the tokenizer has no {missing[0]} token (nor a reserved slot for it); "
                                 f"set tokenizer.add_tokens = 'auto' to add {', '.join(missing)}")
        return
    if tok.pad_in_text() and PAD_TOKEN not in tok.special_tokens:
        missing.append(PAD_TOKEN)
    tok.add_special_tokens(missing)
    if PAD_TOKEN in tok.added_tokens:
        tok.pad_id = tok.added_tokens[PAD_TOKEN]


def apply_tokens_record(tok, record: dict) -> None:
    """Append the tokens a checkpoint's ``tokens_record`` says were added (same ids)."""
    added = record.get("added") or {}
    names = [n for n, _ in sorted(added.items(), key=lambda x: x[1]) if n not in tok.special_tokens]
    tok.add_special_tokens(names)
    wrong = {n: i for n, i in added.items() if tok.special_tokens.get(n) != i}
    if wrong:
        raise TokenizerError(f"the tokenizer gives {', '.join(wrong)} other ids than the checkpoint "
                             f"({wrong}); use the tokenizer the model was trained with")
    if record.get("pad_id") is not None and record["pad_id"] < tok.vocab_size:
        tok.pad_id = record["pad_id"]


def build_tokenizer(cfg, tokens: list[str] | None = None) -> TikTokenizer | HFTokenizer:
    """The tokenizer of ``cfg``: a JobConfig or a bare ``[tokenizer]`` section (kind, path).
    ``tokens``: the special tokens the run's objectives need (``objectives.special_tokens``),
    added as ``tokenizer.add_tokens`` says; by default those of the JobConfig's objectives
    (none for a bare section)."""
    tok_cfg = getattr(cfg, "tokenizer", cfg)
    path = Path(tok_cfg.path)
    if not path.is_file():
        hint = (
            "train one with: python tools/make_demo_data.py --out demo_data && "
            "python tools/train_tokenizer.py --input demo_data --out assets/tokenizer/tokenizer.model"
            if tok_cfg.kind == "tiktoken" else "point tokenizer.path at a Hugging Face tokenizer.json"
        )
        raise TokenizerError(f"tokenizer.path '{path}' does not exist; {hint}")
    from titan_jepa.data.hf_chat_template import attach_chat_template

    tok = TikTokenizer(path) if tok_cfg.kind == "tiktoken" else HFTokenizer(path)
    if tokens is None and tok_cfg is not cfg:  # a JobConfig: its objectives' tokens
        from titan_jepa.objectives import build_objectives, special_tokens

        tokens = special_tokens(build_objectives(cfg))
    if tokens is not None:
        add_method_tokens(tok, tokens, getattr(tok_cfg, "add_tokens", "auto"))
    # tokenizer.chat_template: the Llama-3 layout or the model's own Jinja template
    return attach_chat_template(tok, tok_cfg)
