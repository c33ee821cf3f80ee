"""Scorers: is a generated answer correct for a gold answer?

Each generative scorer is ``fn(prediction: str, gold: str) -> bool`` (``gold`` is the last
assistant message of the data line). The run picks one by name or, with ``auto``, from the
data file's name (``scorer_for_path``).

exact       ``prediction.strip() == gold.strip()`` (synth / NL-RX, turk, rotten_tomatoes,
            yelp): the reference's metric.
startswith  ``prediction.strip().startswith(gold.strip())`` with a non-empty gold: for models
            that are not instruction-tuned and do not stop after the answer (the paper's
            from-scratch synth numbers). The gold must be the prediction's prefix as text,
            not only its first token.
gsm8k       the final answers are compared: the text after the last "####" of each side
            (the gold's "\\n#### 18"), with commas, "$", spaces and a trailing "." removed,
            and numbers compared by value (18 == 18.0). A prediction without "####" is
            wrong; a gold without it is compared whole.
nq_open     golds are the assistant message split on ";" ("Guy Henry's; Guy Henry"). Correct
            when the normalised prediction (lower case, no punctuation, no a/an/the, single
            spaces: the SQuAD normalisation) equals one normalised gold (a gold that
            normalises to nothing, such as "/", is compared as stripped text). An empty
            prediction is never correct (the reference had this reversed).
hellaswag   not generative: the prediction is the letter among A/B/C/D whose first token
            has the largest next-token logit after the whole (untruncated) prompt and the
            assistant header; correct when it equals the gold letter (see eval/run.py).
spider      exact match of normalised SQL (``normalize_sql``: case, whitespace, quotes,
            spaces around punctuation, a trailing ";"), and, with ``--sqlite-dir``,
            execution accuracy (``spider_execution_match``): both queries run read-only on
            the line's database and their results compare equal (as multisets of rows, or
            as lists when the gold has ORDER BY).
"""

from __future__ import annotations

import re
import sqlite3
import string
from collections import Counter
from pathlib import Path

SCORERS = ("exact", "startswith", "gsm8k", "nq_open", "hellaswag", "spider")


# ---- exact / startswith ---------------------------------------------------------------
def exact_match(prediction: str, gold: str) -> bool:
    return prediction.strip() == gold.strip()


def startswith_match(prediction: str, gold: str) -> bool:
    gold = gold.strip()
    return bool(gold) and prediction.strip().startswith(gold)


# ---- gsm8k ------------------------------------------------------------------------------
def gsm8k_answer(text: str) -> str | None:
    """The final answer after the last "####", normalised; None when there is none."""
    if "####" not in text:
        return None
    ans = text.rsplit("####", 1)[1].strip()
    ans = ans.split("\n", 1)[0]
    ans = re.sub(r"[,$\s]", "", ans).rstrip(".")
    return ans


def _as_number(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def gsm8k_match(prediction: str, gold: str) -> bool:
    pred = gsm8k_answer(prediction)
    ref = gsm8k_answer(gold)
    if ref is None:
        ref = re.sub(r"[,$\s]", "", gold).rstrip(".")
    if not pred or not ref:
        return False
    if pred == ref:
        return True
    a, b = _as_number(pred), _as_number(ref)
    return a is not None and b is not None and abs(a - b) < 1e-9


# ---- nq_open ----------------------------------------------------------------------------
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def nq_open_golds(gold: str) -> list[str]:
    return [g.strip() for g in gold.split(";") if g.strip()]


def nq_open_match(prediction: str, gold: str) -> bool:
    raw = prediction.strip()
    if not raw:  # an empty answer is never correct
        return False
    pred = normalize_answer(raw)
    for g in nq_open_golds(gold):
        norm = normalize_answer(g)
        # a gold that normalises to nothing (e.g. "/") is compared as raw text
        if (norm and pred == norm) or (not norm and raw.lower() == g.lower()):
            return True
    return False


# ---- hellaswag --------------------------------------------------------------------------
HELLASWAG_LETTERS = ("A", "B", "C", "D")


def hellaswag_match(prediction: str, gold: str) -> bool:
    return prediction.strip() == gold.strip() and gold.strip() in HELLASWAG_LETTERS


# ---- spider -----------------------------------------------------------------------------
def normalize_sql(sql: str) -> str:
    sql = sql.strip().rstrip(";").strip().replace('"', "'").lower()
    sql = re.sub(r"\s*([(),=<>!*+\-/])\s*", r" \1 ", sql)
    sql = re.sub(r"([<>!])\s+=", r"\1=", sql)  # keep <=, >=, != together
    return " ".join(sql.split())


def spider_exact_match(prediction: str, gold: str) -> bool:
    pred = normalize_sql(prediction)
    return bool(pred) and pred == normalize_sql(gold)


_DB_ID = re.compile(r"db_id:\s*\[([^\]]+)\]")


def spider_db_id(user_message: str) -> str | None:
    """The database name of a spider line: its user message starts "For db_id:[name]"."""
    m = _DB_ID.search(user_message)
    return m.group(1).strip() if m else None


def find_sqlite(sqlite_dir: str | Path, db_id: str) -> Path | None:
    """Spider's layout <dir>/<db_id>/<db_id>.sqlite, or <dir>/<db_id>.sqlite (or .db)."""
    d = Path(sqlite_dir)
    for p in (d / db_id / f"{db_id}.sqlite", d / f"{db_id}.sqlite", d / db_id / f"{db_id}.db",
              d / f"{db_id}.db"):
        if p.is_file():
            return p
    return None


class SQLTimeout(RuntimeError):
    pass


def run_sql(db_path: str | Path, sql: str, timeout_s: float = 10.0) -> list[tuple]:
    """Run one query read-only; raises sqlite3.Error on bad SQL, SQLTimeout when too slow."""
    import time

    conn = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode(errors="replace")
    deadline = time.monotonic() + timeout_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as e:
        if "interrupted" in str(e) and time.monotonic() > deadline:
            raise SQLTimeout(f"query ran longer than {timeout_s}s") from None
        raise
    finally:
        conn.close()


def _rows_equal(a: list[tuple], b: list[tuple], ordered: bool) -> bool:
    if ordered:
        return a == b
    return Counter(map(repr, a)) == Counter(map(repr, b))


def spider_execution_match(prediction: str, gold: str, db_path: str | Path,
                           timeout_s: float = 10.0) -> bool:
    """Both queries' results equal on the database (a failing prediction is wrong)."""
    if not prediction.strip():
        return False
    gold_rows = run_sql(db_path, gold, timeout_s)  # a broken gold is the data's problem: raise
    try:
        pred_rows = run_sql(db_path, prediction, timeout_s)
    except (sqlite3.Error, SQLTimeout, sqlite3.Warning):
        return False
    ordered = "order by" in normalize_sql(gold)
    return _rows_equal(pred_rows, gold_rows, ordered)


# ---- picking one ------------------------------------------------------------------------
MATCHERS = {
    "exact": exact_match,
    "startswith": startswith_match,
    "gsm8k": gsm8k_match,
    "nq_open": nq_open_match,
    "hellaswag": hellaswag_match,
    "spider": spider_exact_match,
}


def scorer_for_path(path: str | Path) -> str:
    """``auto``: the scorer named by the data file (gsm8k_test.jsonl -> gsm8k), else exact."""
    name = Path(path).name.lower()
    for key in ("gsm8k", "nq_open", "hellaswag", "spider"):
        if key in name:
            return key
    return "exact"


def resolve_scorer(name: str, data_path: str | Path) -> str:
    if name == "auto":
        return scorer_for_path(data_path)
    if name not in SCORERS:
        raise ValueError(f"unknown scorer '{name}'; choose auto or one of {', '.join(SCORERS)}")
    return name
