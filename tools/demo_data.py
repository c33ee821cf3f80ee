"""Small deterministic demo data sets, generated (no downloads); the CLI is
tools/make_demo_data.py:

    python tools/make_demo_data.py --out demo_data --seed 0

``make_demo_data(out, seed)`` (and the CLI) writes, under ``out``:
  regex_train.jsonl, regex_test.jsonl  natural language -> regular expression chat data in
      the LLM-JEPA format ({"messages": [system, user, assistant]}), in the spirit of
      NL-RX-SYNTH (same phrasing conventions, generated from a small grammar).
  corpus.jsonl  {"text": ...} documents of generated English paragraphs (~1.5 MB) for
      pretraining smoke tests and for training the demo tokenizer.
  paraphrase_train.jsonl  {"text": ..., "code": ...} pairs (one statement in active and in
      passive voice) for paraphrase-style JEPA pretraining (data.kind = "pairs").
The same seed always gives byte-identical files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Convert natural language to regular expression."
WORDS = ["dog", "truck", "ring", "lake", "bird", "tree", "sun", "car", "fish", "moon"]
CLASSES = [  # (phrase, regex)
    ("a number", "[0-9]"), ("a letter", "[A-Za-z]"), ("a lower-case letter", "[a-z]"),
    ("a capital letter", "[A-Z]"), ("a vowel", "[AEIOUaeiou]"), ("a character", "."),
]


def atom(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.45:
        w = rng.choice(WORDS)
        return f"the string '{w}'", w
    return rng.choice(CLASSES)


def expr(rng: random.Random, depth: int) -> tuple[str, str]:
    if depth <= 0 or rng.random() < 0.35:
        return atom(rng)
    (a, ra), (b, rb) = expr(rng, depth - 1), expr(rng, depth - 1)
    op = rng.randrange(6)
    if op == 0:
        return f"{a} followed by {b}", f"({ra}).*({rb}).*"
    if op == 1:
        return f"{a} before {b}", f"({ra}).*({rb})"
    if op == 2:
        return f"{a} or {b}", f"({ra})|({rb})"
    if op == 3:
        return f"{a} and {b}", f"({ra})&({rb})"
    if op == 4:
        n = rng.randint(2, 7)
        return f"{a}, {n} or more times", f"({ra}){{{n},}}"
    return f"{a}, zero or more times", f"({ra})*"


def regex_sample(rng: random.Random) -> dict:
    desc, rx = expr(rng, 2)
    frame = rng.randrange(5)
    if frame == 0:
        user, rx = f"lines containing {desc}", f".*{rx}.*"
    elif frame == 1:
        user, rx = f"lines starting with {desc}", f"({rx}).*"
    elif frame == 2:
        user, rx = f"lines ending with {desc}", f".*({rx})"
    elif frame == 3:
        user, rx = f"lines with words with {desc}", f"\\b{rx}\\b"
    else:
        user = f"lines having {desc}"
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": user},
        {"role": "assistant", "content": rx},
    ]}


NOUNS = ["river", "city", "teacher", "machine", "garden", "storm", "library", "engine", "village",
         "scientist", "market", "mountain", "child", "computer", "ocean", "painter", "road", "forest",
         "model", "student", "bridge", "island", "farmer", "letter", "window", "kitchen", "train"]
VERBS = ["watches", "builds", "remembers", "crosses", "follows", "opens", "describes", "finds",
         "carries", "measures", "changes", "protects", "reads", "answers", "learns", "repairs"]
ADJS = ["quiet", "bright", "old", "careful", "small", "strange", "golden", "heavy", "patient",
        "distant", "busy", "gentle", "narrow", "simple", "ancient", "curious"]
ADVS = ["slowly", "every morning", "without a word", "before sunset", "again", "at night",
        "in the spring", "with great care", "for the first time", "after the rain"]
CONN = ["Meanwhile,", "Later,", "However,", "Because of this,", "In the end,", "Still,", "Then"]


def sentence(rng: random.Random) -> str:
    s = f"the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"
    if rng.random() < 0.5:
        s += f" {rng.choice(ADVS)}"
    if rng.random() < 0.25:
        s += f" near {rng.randint(2, 999)} {rng.choice(NOUNS)}s"
    if rng.random() < 0.3:
        s = f"{rng.choice(CONN)} {s}"
    s = s[0].upper() + s[1:]
    return s + rng.choice([".", ".", ".", "!", "?"])


def document(rng: random.Random) -> str:
    paras = []
    for _ in range(rng.randint(1, 4)):
        paras.append(" ".join(sentence(rng) for _ in range(rng.randint(2, 8))))
    return "\n\n".join(paras)


PARTICIPLES = {"watches": "watched", "builds": "built", "remembers": "remembered", "crosses": "crossed",
               "follows": "followed", "opens": "opened", "describes": "described", "finds": "found",
               "carries": "carried", "measures": "measured", "changes": "changed", "protects": "protected",
               "reads": "read", "answers": "answered", "learns": "learned", "repairs": "repaired"}


def paraphrase_pair(rng: random.Random) -> dict:
    """Two phrasings of one statement (active and passive voice), for paraphrase pretraining."""
    subj = f"the {rng.choice(ADJS)} {rng.choice(NOUNS)}"
    obj = f"the {rng.choice(ADJS)} {rng.choice(NOUNS)}"
    verb = rng.choice(VERBS)
    adv = f" {rng.choice(ADVS)}" if rng.random() < 0.5 else ""
    active = f"{subj} {verb} {obj}{adv}."
    passive = f"{obj} is {PARTICIPLES[verb]} by {subj}{adv}."
    return {"text": active[0].upper() + active[1:], "code": passive[0].upper() + passive[1:]}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_demo_data(out: str | Path, seed: int = 0, n_train: int = 2000, n_test: int = 200,
                   n_docs: int = 3000) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    write_jsonl(out / "regex_train.jsonl", [regex_sample(rng) for _ in range(n_train)])
    write_jsonl(out / "regex_test.jsonl", [regex_sample(rng) for _ in range(n_test)])
    write_jsonl(out / "corpus.jsonl", [{"text": document(rng)} for _ in range(n_docs)])
    # a generator of its own, so the files above do not change when this one does
    prng = random.Random(seed + 7919)
    write_jsonl(out / "paraphrase_train.jsonl", [paraphrase_pair(prng) for _ in range(n_train)])
    return out
