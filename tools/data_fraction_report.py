"""Accuracy against training-data fraction, from finished ``tools/sweep.py`` folders.

    python tools/data_fraction_report.py \\
        --point 1/16 sweeps/i16_1of16_jepa sweeps/i16_1of16_stp \\
        --point 1/4 sweeps/i16_1of4_jepa sweeps/i16_1of4_stp \\
        --point 1 sweeps/i16_l1k1 sweeps/i16_all_stp \\
        --label lambda1-k1="LLM-JEPA" --label "enablefalse-enabletrue-*=STP" \\
        --out docs/results_lowdata

Each ``--point FRACTION SWEEP...`` names the sweeps trained on that fraction of the data. The
arms are read from each sweep's ``results.json`` and its finished runs from
``evals/<slug>_s<seed>.json`` (the prediction lists of ``titan_jepa.eval``), so both exact match and startswith are scored
from the same predictions. A baseline shared by several sweeps of one fraction (copied runs)
counts once; two different results for the same baseline run are an error.

Writes ``OUT.md`` (a table per fraction: mean ± std over seeds, paired one-tailed t-tests
against the baseline on the seeds both have) and ``OUT.png`` (accuracy against fraction, log
scale, error bars = sample std, faint points = the seeds), and ``OUT.json`` with every number.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from fractions import Fraction
from pathlib import Path

from sweep_report import fmt_num, read_eval
from titan_jepa.errors import UserError, run_main
from titan_jepa.eval.scorers import exact_match, startswith_match
from stats import mean_std, paired_t_test_one_tailed

SCORES = {"exact": exact_match, "startswith": startswith_match}
BASELINE_LABEL = "next-token"


class ReportError(UserError):
    """One line naming the fix."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/data_fraction_report.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--point", nargs="+", action="append", required=True, metavar="FRACTION SWEEP",
                   help="a data fraction (1/16, 0.25, 1) and the sweep folders trained on it")
    p.add_argument("--label", action="append", default=[], metavar="SLUG_GLOB=NAME",
                   help="display name of the arms whose run slug matches the glob")
    p.add_argument("--out", required=True, help="output path without suffix (.md, .png, .json)")
    return p.parse_args(argv)


def _fraction(text: str) -> float:
    try:
        f = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise ReportError(f"--point '{text}' is not a fraction; write e.g. 1/16, 0.25 or 1") from None
    if not 0 < f <= 1:
        raise ReportError(f"--point {text} is outside (0, 1]; it is the share of the training data")
    return f


def label_of(slug: str, baseline: bool, labels: list[tuple[str, str]]) -> str:
    if baseline:
        return BASELINE_LABEL
    for pattern, name in labels:
        if fnmatch.fnmatchcase(slug, pattern):
            return name
    return slug


def score_file(path: Path) -> dict[str, float]:
    """{'exact': acc, 'startswith': acc} from one evaluation JSON's predictions."""
    try:
        preds = read_eval(path)["predictions"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{path}: not an evaluation JSON with 'predictions' ({e}); "
                          f"rerun its sweep with --resume") from None
    if not preds:
        raise ReportError(f"{path} has no predictions; rerun its sweep with --resume")
    return {name: sum(fn(p["prediction"], p["gold"]) for p in preds) / len(preds)
            for name, fn in SCORES.items()}


def collect(points: list[tuple[float, list[Path]]], labels: list[tuple[str, str]]) -> dict:
    """{fraction: {arm label: {seed: {'exact': .., 'startswith': ..}}}}."""
    out: dict[float, dict[str, dict[int, dict[str, float]]]] = {}
    for frac, sweeps in points:
        arms = out.setdefault(frac, {})
        for sweep in sweeps:
            meta_path = sweep / "results.json"
            if not meta_path.is_file():
                raise ReportError(f"{meta_path} does not exist; run the sweep (tools/sweep.py) first")
            meta = json.loads(meta_path.read_text())
            for arm in meta["arms"]:
                name = label_of(arm["slug"], arm["baseline"], labels)
                runs = arms.setdefault(name, {})
                for f in sorted([*(sweep / "evals").glob(f"{arm['slug']}_s*.json"),
                                 *(sweep / "evals").glob(f"{arm['slug']}_s*.json.gz")]):
                    seed_text = f.name[len(arm["slug"]) + 2:].removesuffix(".gz").removesuffix(".json")
                    if not seed_text.isdigit():  # <run>.run.json: timings, not predictions
                        continue
                    seed, scores = int(seed_text), score_file(f)
                    if seed in runs and runs[seed] != scores:
                        raise ReportError(f"{f}: arm '{name}' seed {seed} at fraction {frac:g} has two "
                                          f"different results; give the arms distinct --label names")
                    runs[seed] = scores
    return out


def summarize(data: dict) -> list[dict]:
    rows = []
    for frac in sorted(data):
        arms = data[frac]
        base = arms.get(BASELINE_LABEL, {})
        for name, runs in arms.items():
            row = {"fraction": frac, "arm": name, "seeds": sorted(runs), "n": len(runs)}
            for score in SCORES:
                vals = [runs[s][score] for s in sorted(runs)]
                row[f"{score}_mean"], row[f"{score}_std"] = mean_std(vals)
                row[f"{score}_per_seed"] = {s: runs[s][score] for s in sorted(runs)}
                shared = sorted(set(runs) & set(base)) if name != BASELINE_LABEL else []
                t, p = paired_t_test_one_tailed([runs[s][score] for s in shared],
                                                [base[s][score] for s in shared])
                row[f"{score}_t"], row[f"{score}_p"], row["n_pairs"] = t, p, len(shared)
            rows.append(row)
    return rows


def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.2f} ± " + ("—" if math.isnan(std) else f"{100 * std:.2f}")


def markdown(rows: list[dict]) -> str:
    seeds = sorted({s for r in rows for s in r["seeds"]})
    lines = ["| data | arm | seeds | exact % (mean ± std) | per seed " + " / ".join(map(str, seeds))
             + " | p exact | startswith % | p startswith |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        per = " / ".join(f"{100 * r['exact_per_seed'][s]:.2f}" if s in r["exact_per_seed"] else "—"
                         for s in seeds)
        base = r["arm"] == BASELINE_LABEL
        lines.append(f"| {Fraction(r['fraction']).limit_denominator(1024)} | {r['arm']} | {r['n']} | "
                     f"{_pct(r['exact_mean'], r['exact_std'])} | {per} | "
                     f"{'—' if base else fmt_num(r['exact_p'], '.3g')} | "
                     f"{_pct(r['startswith_mean'], r['startswith_std'])} | "
                     f"{'—' if base else fmt_num(r['startswith_p'], '.3g')} |")
    lines += ["", "p: paired one-tailed t-test against next-token over the seeds both arms have "
              "(H1: the arm is better). std: sample standard deviation over seeds.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for ax, score in zip(axes, SCORES):
        for k, arm in enumerate(arms):
            rs = [r for r in rows if r["arm"] == arm and r["n"]]
            xs = [r["fraction"] * (1.0 + 0.04 * (k - (len(arms) - 1) / 2)) for r in rs]
            ys = [100 * r[f"{score}_mean"] for r in rs]
            es = [0.0 if r["n"] < 2 else 100 * r[f"{score}_std"] for r in rs]
            line = ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=arm)
            for x, r in zip(xs, rs):  # the seeds themselves, faint
                vals = [100 * v for v in r[f"{score}_per_seed"].values()]
                ax.scatter([x] * len(vals), vals, s=12, alpha=0.35, color=line[0].get_color(), zorder=3)
        ax.set_xscale("log", base=2)
        fr = sorted({r["fraction"] for r in rows})
        ax.set_xticks(fr)
        ax.set_xticklabels([str(Fraction(f).limit_denominator(1024)) for f in fr])
        ax.set_xlabel("fraction of the training data")
        ax.set_title(f"{score} (mean ± std over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def report(a: argparse.Namespace) -> int:
    points = []
    for item in a.point:
        if len(item) < 2:
            raise ReportError(f"--point {item[0]} names no sweep folder; write --point FRACTION SWEEP...")
        points.append((_fraction(item[0]), [Path(s) for s in item[1:]]))
    labels = []
    for item in a.label:
        pattern, eq, name = item.partition("=")
        if not eq or not pattern or not name:
            raise ReportError(f"--label '{item}' is not SLUG_GLOB=NAME (e.g. lambda1-k1=LLM-JEPA)")
        labels.append((pattern, name))
    rows = summarize(collect(points, labels))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(markdown(rows))
    out.with_suffix(".json").write_text(json.dumps(_json_safe(rows), indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(markdown(rows))
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}, {out.with_suffix('.png')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    return run_main(lambda: report(a))


if __name__ == "__main__":
    sys.exit(main())
