"""Test items that flip between a sweep's baseline and each other arm, seed by seed.

    python tools/flips_report.py sweeps/i22_main [--baseline baseline]

For every arm and seed that both it and the baseline have, from the per-item predictions in
``<sweep>/evals/<arm>_s<seed>.json.gz``: items the arm gets right and the baseline wrong
("gained"), the reverse ("lost"), and the net change. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_report import read_eval  # noqa: E402


def correct_items(path: Path) -> dict[int, bool]:
    return {p["index"]: bool(p["correct"]) for p in read_eval(path)["predictions"]}


def flips(sweep: Path, baseline: str = "baseline") -> list[dict]:
    runs = json.loads((sweep / "results.json").read_text())["runs"]
    base = {r["seed"]: r for r in runs if r["arm"] == baseline}
    rows = []
    for r in runs:
        if r["arm"] == baseline or r["seed"] not in base:
            continue
        a = correct_items(sweep / "evals" / Path(r["eval_json"]).name)
        b = correct_items(sweep / "evals" / Path(base[r["seed"]]["eval_json"]).name)
        if a.keys() != b.keys():
            raise SystemExit(f"error: {r['run']} and {base[r['seed']]['run']} were evaluated on other items")
        gained = sum(a[i] and not b[i] for i in a)
        lost = sum(b[i] and not a[i] for i in a)
        rows.append({"arm": r["arm"], "seed": r["seed"], "n": len(a), "gained": gained, "lost": lost,
                     "net": gained - lost})
    return rows


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
    print(markdown(flips(a.sweep, a.baseline), a.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
