"""tools/data_fraction_report.py on fake sweep folders: scores recomputed from the predictions,
shared baselines counted once, paired tests, and one-line errors."""

import json
import sys

import pytest

from helpers import ROOT
from stats import paired_t_test_one_tailed

sys.path.insert(0, str(ROOT / "tools"))
import data_fraction_report as dfr  # noqa: E402


def _sweep(path, arms, results):
    """arms: [(slug, baseline)]; results: {(slug, seed): [(prediction, gold), ...]}."""
    (path / "evals").mkdir(parents=True)
    seeds = sorted({s for _, s in results})
    (path / "results.json").write_text(json.dumps(
        {"seeds": seeds, "arms": [{"name": s, "slug": s, "baseline": b} for s, b in arms]}))
    for (slug, seed), preds in results.items():
        (path / "evals" / f"{slug}_s{seed}.json").write_text(json.dumps(
            {"predictions": [{"prediction": p, "gold": g} for p, g in preds]}))
        (path / "evals" / f"{slug}_s{seed}.run.json").write_text('{"train_seconds": 1.0}')


def _preds(n_exact, n_prefix, n_wrong):
    return [("a", "a")] * n_exact + [("ab", "a")] * n_prefix + [("b", "a")] * n_wrong


def test_report_scores_pairs_and_shares_the_baseline(tmp_path):
    base = {("baseline", 1): _preds(2, 0, 8), ("baseline", 2): _preds(3, 1, 6), ("baseline", 3): _preds(1, 1, 8)}
    _sweep(tmp_path / "q_jepa", [("baseline", True), ("lambda1-k1", False)],
           {**base, ("lambda1-k1", 1): _preds(4, 0, 6), ("lambda1-k1", 2): _preds(4, 2, 4),
            ("lambda1-k1", 3): _preds(2, 0, 8)})
    _sweep(tmp_path / "q_stp", [("baseline", True), ("enablefalse-enabletrue-x", False)],
           {**base, ("enablefalse-enabletrue-x", 1): _preds(1, 0, 9)})  # one seed finished
    _sweep(tmp_path / "all", [("baseline", True), ("lambda1-k1", False)],
           {("baseline", 1): _preds(5, 0, 5), ("lambda1-k1", 1): _preds(6, 0, 4)})
    out = tmp_path / "rep" / "lowdata"
    assert dfr.main(["--point", "1/4", str(tmp_path / "q_jepa"), str(tmp_path / "q_stp"),
                     "--point", "1", str(tmp_path / "all"), "--label", "lambda1-k1=JEPA",
                     "--label", "enablefalse-enabletrue-*=STP", "--out", str(out)]) == 0
    rows = {(r["fraction"], r["arm"]): r for r in json.loads(out.with_suffix(".json").read_text())}
    assert set(rows) == {(0.25, "next-token"), (0.25, "JEPA"), (0.25, "STP"), (1.0, "next-token"), (1.0, "JEPA")}
    b, j = rows[(0.25, "next-token")], rows[(0.25, "JEPA")]
    assert b["n"] == 3 and b["exact_per_seed"] == {"1": 0.2, "2": 0.3, "3": 0.1}
    assert b["startswith_per_seed"] == {"1": 0.2, "2": 0.4, "3": 0.2}
    assert j["exact_mean"] == pytest.approx(1 / 3)
    t, p = paired_t_test_one_tailed([0.4, 0.4, 0.2], [0.2, 0.3, 0.1])
    assert (j["exact_t"], j["exact_p"]) == (pytest.approx(t), pytest.approx(p))
    t, p = paired_t_test_one_tailed([0.4, 0.6, 0.2], [0.2, 0.4, 0.2])
    assert j["startswith_p"] == pytest.approx(p)
    assert rows[(0.25, "STP")]["n"] == 1 and rows[(0.25, "STP")]["exact_p"] is None  # 1 pair: no test
    assert rows[(1.0, "JEPA")]["exact_mean"] == pytest.approx(0.6)
    md = out.with_suffix(".md").read_text()
    assert "| 1/4 | JEPA | 3 | 33.33 ± 11.55 | 40.00 / 40.00 / 20.00 |" in md
    assert out.with_suffix(".png").stat().st_size > 1000


def test_report_errors_name_the_fix(tmp_path, capsys):
    _sweep(tmp_path / "a", [("baseline", True)], {("baseline", 1): _preds(1, 0, 1)})
    _sweep(tmp_path / "b", [("baseline", True)], {("baseline", 1): _preds(0, 0, 2)})
    cases = [(["--point", "2", str(tmp_path / "a")], "outside (0, 1]"),
             (["--point", "x/y", str(tmp_path / "a")], "is not a fraction"),
             (["--point", "1"], "names no sweep folder"),
             (["--point", "1", str(tmp_path / "none")], "run the sweep"),
             (["--point", "1", str(tmp_path / "a"), str(tmp_path / "b")], "two different results"),
             (["--point", "1", str(tmp_path / "a"), "--label", "nolabel"], "SLUG_GLOB=NAME")]
    for args, msg in cases:
        with pytest.raises(SystemExit) as e:
            dfr.main([*args, "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
