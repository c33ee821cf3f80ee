"""Paired comparisons of a sweep's arms against one of them: items that flip, seed by seed,
and the paired t-test of the accuracies.

    python tools/flips_report.py sweeps/i22_main [--baseline baseline]

``--baseline`` is any arm of the sweep (default: the sweep's baseline, named ``baseline``),
so a control arm can be the reference, e.g. ``--baseline next-token-steps``. Prints two
markdown tables:
- flips: for every arm and seed that both it and the reference have, from the per-item
  predictions in ``<sweep>/evals/<arm>_s<seed>.json.gz``: items the arm gets right and the
  reference wrong ("gained"), the reverse ("lost"), and the net change;
- paired test: per arm, the mean accuracy difference to the reference over the seeds both
  have and the paired one-tailed t-test of arm > reference (``stats.paired_t_test_one_tailed``,
  what results.md reports against the sweep's own baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stats import mean_std, paired_t_test_one_tailed  # noqa: E402
from sweep_report import fmt_num, read_eval  # noqa: E402


def correct_items(path: Path) -> dict[int, bool]:
    return {p["index"]: bool(p["correct"]) for p in read_eval(path)["predictions"]}


def flips(sweep: Path, baseline: str = "baseline") -> list[dict]:
    runs = json.loads((sweep / "results.json").read_text())["runs"]
    base = {r["seed"]: r for r in runs if r["arm"] == baseline}
    rows = []
    for r in runs:
        if r["arm"] == baseline or r["seed"] not in base:
            continue
        if r.get("evaluation_missing") or base[r["seed"]].get("evaluation_missing"):
            continue  # the per-item predictions are gone: no flips for this pair (sweep.py --resume reruns it)
        a = correct_items(sweep / "evals" / Path(r["eval_json"]).name)
        b = correct_items(sweep / "evals" / Path(base[r["seed"]]["eval_json"]).name)
        if a.keys() != b.keys():
            raise SystemExit(f"error: {r['run']} and {base[r['seed']]['run']} were evaluated on other items")
        gained = sum(a[i] and not b[i] for i in a)
        lost = sum(b[i] and not a[i] for i in a)
        rows.append({"arm": r["arm"], "seed": r["seed"], "n": len(a), "gained": gained, "lost": lost,
                     "net": gained - lost})
    return rows


def paired(sweep: Path, baseline: str = "baseline") -> list[dict]:
    """Per arm other than ``baseline``: the seeds both have, the accuracy differences (points),
    their mean and std, and the paired one-tailed t-test of arm > baseline."""
    runs = json.loads((sweep / "results.json").read_text())["runs"]
    acc: dict[str, dict[int, float]] = {}
    for r in runs:
        acc.setdefault(r["arm"], {})[r["seed"]] = 100 * r["accuracy"]
    if baseline not in acc:
        raise SystemExit(f"error: no arm named {baseline!r} in {sweep / 'results.json'}; "
                         f"arms: {', '.join(sorted(acc))}")
    rows = []
    for arm, by_seed in acc.items():
        if arm == baseline:
            continue
        seeds = sorted(set(by_seed) & set(acc[baseline]))
        # accuracies are counts over the same items: rounding keeps a zero difference at 0, not -1e-15
        diffs = [round(by_seed[s] - acc[baseline][s], 9) + 0.0 for s in seeds]
        mean, std = mean_std(diffs) if diffs else (float("nan"), float("nan"))
        t, p = paired_t_test_one_tailed(diffs, [0.0] * len(diffs))
        rows.append({"arm": arm, "seeds": seeds, "diffs": diffs, "mean_diff": mean,
                     "std_diff": std if len(diffs) > 1 else float("nan"), "t": t, "p": p})
    return rows


def paired_markdown(rows: list[dict], baseline: str) -> str:
    lines = [f"| arm | seeds | arm - {baseline} per seed (points) | mean ± std | t | p (arm > {baseline}) |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        per_seed = ", ".join(f"{d:+.2f}" for d in r["diffs"]) or "—"
        lines.append(f"| {r['arm']} | {' '.join(map(str, r['seeds'])) or '—'} | {per_seed} | "
                     f"{fmt_num(r['mean_diff'], '+.2f')} ± {fmt_num(r['std_diff'], '.2f')} | "
                     f"{fmt_num(r['t'], '.3f')} | {fmt_num(r['p'], '.4g')} |")
    return "\n".join(lines)


def markdown(rows: list[dict], baseline: str) -> str:
    lines = [f"| arm | seed | items | right only with the arm | right only with {baseline} | net |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['n']} | {r['gained']} | {r['lost']} | {r['net']:+d} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path)
    p.add_argument("--baseline", default="baseline")
    a = p.parse_args(argv)
    rows = paired(a.sweep, a.baseline)  # first: it names the arms when --baseline is wrong
    print(markdown(flips(a.sweep, a.baseline), a.baseline))
    print()
    print(paired_markdown(rows, a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
