"""The scorers, on hand-made cases and on the shared LLM-JEPA test files' golds."""

import json
import sqlite3
from pathlib import Path

import pytest

from titan_jepa.eval import scorers as S

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "llm_jepa"


def test_exact_and_startswith():
    assert S.exact_match("  (dog).*  \n", "(dog).*")
    assert not S.exact_match("(dog).*x", "(dog).*")
    assert not S.exact_match("", "Good")
    assert S.startswith_match("Good, I think", " Good")
    assert not S.startswith_match("Goo", "Good")
    assert not S.startswith_match("anything", "   ")  # an empty gold matches nothing


def test_gsm8k():
    gold = "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"
    assert S.gsm8k_match("She makes 9 * 2 = $18.\n#### 18", gold)
    assert S.gsm8k_match("#### $18.00", gold)  # value comparison
    assert S.gsm8k_match("#### 1,800", "steps\n#### 1800")
    assert not S.gsm8k_match("the answer is 18", gold)  # no "####": wrong, no crash
    assert not S.gsm8k_match("#### ", gold)
    assert not S.gsm8k_match("#### 17", gold)
    assert S.gsm8k_match("#### 5\nsome trailing text", "#### 5")
    assert S.gsm8k_match("#### 7", "7")  # a gold without "####" is compared whole
    assert S.gsm8k_answer("no answer") is None


def test_nq_open():
    gold = "actor Guy Henry's; Guy Henry"
    assert S.nq_open_match("Guy Henry", gold)
    assert S.nq_open_match("guy henry.", gold)
    assert S.nq_open_match("The Nine", "Nine")
    assert not S.nq_open_match("Peter Cushing", gold)
    # the reference counted an empty answer as correct: never here
    assert not S.nq_open_match("", gold)
    assert not S.nq_open_match("  the ", "The Nine")
    assert S.nq_open_match(" / ", "/")  # a gold with no words is compared as text
    assert S.nq_open_golds("759; 527") == ["759", "527"]


def test_hellaswag_letters():
    assert S.hellaswag_match("B", "B")
    assert not S.hellaswag_match("A", "B")
    assert not S.hellaswag_match("", "")


def test_spider_exact():
    gold = "SELECT count(*) FROM city AS T1 JOIN country AS T2 ON T1.country_id  =  T2.country_id"
    assert S.spider_exact_match(
        "select COUNT( * ) from city as t1 join country as t2 on t1.country_id=t2.country_id;", gold)
    assert not S.spider_exact_match("SELECT count(*) FROM city", gold)
    assert not S.spider_exact_match("", gold)
    assert S.normalize_sql("a >= 1 AND b != 'x'") == S.normalize_sql("a>=1 and b!='x'")
    assert S.spider_db_id("For db_id:[sakila_1]\n\nHow many cities?") == "sakila_1"
    assert S.spider_db_id("no id") is None


def _make_db(folder: Path, db_id: str) -> Path:
    (folder / db_id).mkdir(parents=True)
    path = folder / db_id / f"{db_id}.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE city (id INTEGER, name TEXT, country TEXT, pop INTEGER)")
    con.executemany("INSERT INTO city VALUES (?, ?, ?, ?)", [
        (1, "Sydney", "Australia", 5), (2, "Perth", "Australia", 2), (3, "Paris", "France", 11)])
    con.commit()
    con.close()
    return path


def test_spider_execution(tmp_path):
    db = _make_db(tmp_path, "geo")
    assert S.find_sqlite(tmp_path, "geo") == db
    gold = "SELECT count(*) FROM city WHERE country = 'Australia'"
    assert S.spider_execution_match("select count(id) from city where country='Australia'", gold, db)
    assert not S.spider_execution_match("SELECT count(*) FROM city", gold, db)
    assert not S.spider_execution_match("SELEC nonsense", gold, db)  # a failing query is wrong
    assert not S.spider_execution_match("", gold, db)
    # without ORDER BY rows compare as multisets, with it as lists
    assert S.spider_execution_match("SELECT name FROM city ORDER BY id DESC", "SELECT name FROM city", db)
    assert not S.spider_execution_match("SELECT name FROM city ORDER BY id DESC",
                                        "SELECT name FROM city ORDER BY id", db)
    # read-only: a prediction cannot change the database
    assert not S.spider_execution_match("DELETE FROM city", gold, db)
    assert S.run_sql(db, "SELECT count(*) FROM city") == [(3,)]


def test_auto_scorer_from_file_name():
    assert S.resolve_scorer("auto", "x/gsm8k_test.jsonl") == "gsm8k"
    assert S.resolve_scorer("auto", "nq_open_test.jsonl") == "nq_open"
    assert S.resolve_scorer("auto", "hellaswag_test.jsonl") == "hellaswag"
    assert S.resolve_scorer("auto", "spider_test.jsonl") == "spider"
    for name in ("synth_test.jsonl", "rotten_tomatoes_test.jsonl", "yelp_test.jsonl", "regex_test.jsonl"):
        assert S.resolve_scorer("auto", name) == "exact"
    assert S.resolve_scorer("startswith", "synth_test.jsonl") == "startswith"
    with pytest.raises(ValueError, match="unknown scorer"):
        S.resolve_scorer("bleu", "a.jsonl")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared LLM-JEPA data not present")
@pytest.mark.parametrize("name", ["synth", "gsm8k", "nq_open", "hellaswag", "spider",
                                  "rotten_tomatoes", "yelp"])
def test_gold_scores_itself_on_shared_data(name):
    """Each file's gold answer, given as the prediction, is correct (and an empty one is not)."""
    path = SHARED / f"{name}_test.jsonl"
    scorer = S.MATCHERS[S.scorer_for_path(path)]
    with open(path) as f:
        rows = [json.loads(next(f)) for _ in range(200)]
    for row in rows:
        gold = row["messages"][-1]["content"]
        pred = gold.split(";")[0] if name == "nq_open" else gold
        assert scorer(pred, gold), (name, gold)
        assert not scorer("", gold), (name, gold)
        if name == "spider":
            user = row["messages"][1]["content"]
            assert S.spider_db_id(user)


def test_run_score_spider_execution_and_missing_db(tmp_path):
    from titan_jepa.eval.run import score

    _make_db(tmp_path, "geo")

    def row(db, sql):
        return {"messages": [{"role": "system", "content": "Convert natural language to SQL."},
                             {"role": "user", "content": f"For db_id:[{db}]\n\nHow many?"},
                             {"role": "assistant", "content": sql}]}

    gold = "SELECT count(*) FROM city WHERE country = 'Australia'"
    rows = [row("geo", gold), row("geo", gold), row("geo", "SELECT name FROM city"), row("nodb", gold)]
    preds = ["SELECT count(id) FROM city WHERE country = 'Australia'", "SELECT count(*) FROM city",
             "select NAME from city", gold]
    res = score(rows, preds, "spider", sqlite_dir=str(tmp_path))
    assert [r["execution"] for r in res["predictions"]] == [True, False, True, False]
    assert [r["exact_match"] for r in res["predictions"]] == [False, False, True, True]
    assert res["metrics"] == {"exact_match": 0.5, "execution_accuracy": 0.5, "missing_databases": 1}
    assert res["accuracy"] == 0.5 and res["n"] == 4
    plain = score(rows, preds, "spider")
    assert plain["accuracy"] == 0.5 and "execution_accuracy" not in plain["metrics"]
