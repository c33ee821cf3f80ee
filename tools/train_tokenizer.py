"""Train a small byte-level BPE and write it as a Llama-3 ``tokenizer.model`` (base64 + rank).

    python tools/make_demo_data.py --out demo_data --seed 0
    python tools/train_tokenizer.py --input demo_data --vocab-size 2048 \\
        --out assets/tokenizer/tokenizer.model

Inputs: files, folders or globs of .jsonl ("text" field, or every message's content of
{"messages": [...]} lines) and .txt files. The trainer is the ``tokenizers`` library's BPE
with Llama-3's pre-tokenisation regex, so ``TikTokenizer`` (tiktoken, same regex) reads the
result; the 256 Llama-3 special tokens are added by the reader after the base vocabulary,
so the total vocabulary is vocab_size + 256 (2304 for the committed demo tokenizer).
Ranks: the 256 single bytes first (by byte value), then one rank per merge, in merge order.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from titan_jepa.data.tokenizer import LLAMA3_PATTERN, write_llama3_ranks
from titan_jepa.errors import DataError, run_main


def iter_texts(inputs: list[str]):
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix in (".jsonl", ".txt"))
        elif p.is_file():
            files.append(p)
        else:
            files += sorted(Path(q) for q in glob.glob(spec))
    if not files:
        raise DataError(f"no .jsonl/.txt input found in {inputs}; create demo data with "
                        "python tools/make_demo_data.py --out demo_data")
    for f in files:
        if f.suffix == ".txt":
            yield f.read_text(encoding="utf-8")
            continue
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj.get("text"), str):
                    yield obj["text"]
                for m in obj.get("messages") or []:
                    if isinstance(m, dict) and isinstance(m.get("content"), str):
                        yield m["content"]


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-level alphabet that HF ByteLevel uses (bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def train_bpe(texts, vocab_size: int) -> dict[bytes, int]:
    """Byte-level BPE with the Llama-3 regex; returns tiktoken mergeable ranks."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    dec = _byte_decoder()

    def to_bytes(s: str) -> bytes:
        return bytes(dec[c] for c in s)

    ranks = {bytes([b]): b for b in range(256)}
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        t = to_bytes(a) + to_bytes(b)
        if t not in ranks:
            ranks[t] = len(ranks)
    return ranks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", default=["demo_data"], help="files, folders or globs")
    p.add_argument("--vocab-size", type=int, default=2048, help="base vocabulary, without the 256 specials")
    p.add_argument("--out", default="assets/tokenizer/tokenizer.model")
    a = p.parse_args()
    ranks = run_main(lambda: train_bpe(iter_texts(a.input), a.vocab_size))
    write_llama3_ranks(ranks, a.out)
    print(f"wrote {a.out}: {len(ranks)} base tokens + 256 specials = {len(ranks) + 256}")


if __name__ == "__main__":
    main()
