"""The reports of tools/sweep.py: per-arm statistics, results.json, results.md and results.png.

``write_reports(out, arms, records, meta)`` rewrites the three files from the records of the
runs done so far (one dict per run: arm, seed, accuracy, final_loss, ...); ``arms`` are
sweep.Arm objects (name, slug, label, baseline, overrides). sweep.py calls it after every run.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from stats import mean_std, paired_t_test_one_tailed


def summarize(arms: list, records: list[dict]) -> list[dict]:
    """One summary per arm: n, accuracy mean/std, loss mean, paired test against the baseline."""
    by_arm = {arm.name: {r["seed"]: r for r in records if r["arm"] == arm.name} for arm in arms}
    base = next((a for a in arms if a.baseline), None)
    out = []
    for arm in arms:
        runs = by_arm[arm.name]
        accs = [runs[s]["accuracy"] for s in sorted(runs)]
        losses = [runs[s]["final_loss"] for s in sorted(runs)
                  if runs[s].get("final_loss") is not None and math.isfinite(runs[s]["final_loss"])]
        mean, std = mean_std(accs)
        steps = sorted({st for st in (int(r.get("final_step") or -1) for r in runs.values()) if st > 0})
        s = {"arm": arm.name, "overrides": arm.label, "baseline": arm.baseline, "n": len(accs), "steps": steps,
             "seeds": sorted(runs), "accuracy_mean": mean, "accuracy_std": std,
             "final_loss_mean": mean_std(losses)[0], "t": None, "p": None, "n_pairs": 0}
        if base is not None and not arm.baseline:
            shared = sorted(set(runs) & set(by_arm[base.name]))
            t, p = paired_t_test_one_tailed([runs[x]["accuracy"] for x in shared],
                                            [by_arm[base.name][x]["accuracy"] for x in shared])
            s.update(t=t, p=p, n_pairs=len(shared))
        out.append(s)
    return out


def fmt_num(x, fmt: str) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def markdown_table(summary: list[dict], records: list[dict], meta: dict) -> str:
    lines = [f"# Sweep: {meta.get('name', '')}".rstrip(), ""]
    lines += [f"- config: `{meta.get('config', '')}`",
              f"- seeds: {' '.join(map(str, meta.get('seeds', [])))}",
              f"- evaluation: `{meta.get('eval_data', '')}` (scorer {meta.get('scorer', 'auto')}"
              + (f", first {meta['eval_limit']} samples" if meta.get("eval_limit", -1) >= 0 else "") + ")",
              ""]
    has_base = any(s["baseline"] for s in summary)
    lines += ["| arm | overrides | seeds | optimizer steps | accuracy % (mean ± std) | final loss (mean) | "
              "p (arm > baseline) | t |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        acc = "—" if s["n"] == 0 else (f"{100 * s['accuracy_mean']:.2f} ± "
                                        f"{fmt_num(100 * s['accuracy_std'] if s['n'] > 1 else None, '.2f')}")
        if s["baseline"] or not has_base:
            p, t = "—", "—"
        else:
            p = fmt_num(s["p"], ".4g") + (f" ({s['n_pairs']} pairs)" if s["n_pairs"] != s["n"] else "")
            t = fmt_num(s["t"], ".3f")
        ovr = s["overrides"].replace("|", "\\|")
        st = s.get("steps") or []
        steps = "—" if not st else str(st[0]) if len(st) == 1 else f"{st[0]}-{st[-1]}"
        lines.append(f"| {s['arm']} | `{ovr}` | {s['n']} | {steps} | {acc} | {fmt_num(s['final_loss_mean'], '.4f')} "
                     f"| {p} | {t} |")
    lines += ["", "Accuracy: mean over seeds ± sample standard deviation (n - 1). p: paired one-tailed "
              "t-test over the seeds both the arm and the baseline have (H1: the arm's accuracy is "
              "higher; scipy.stats.ttest_rel(arm, baseline, alternative='greater')); if every paired "
              "difference is the same, p = 0 when it is positive and 1 otherwise; fewer than 2 pairs: —. "
              "Optimizer steps: the runs' final steps (min-max). Arms that differ in steps differ in "
              "more than their objective: compare them at equal steps too."]
    if records:
        seeds = sorted({r["seed"] for r in records})
        lines += ["", "## Per seed (accuracy %)", "",
                  "| arm | " + " | ".join(f"seed {x}" for x in seeds) + " |",
                  "| --- |" + " ---: |" * len(seeds)]
        for s in summary:
            acc = {r["seed"]: r["accuracy"] for r in records if r["arm"] == s["arm"]}
            missing = {r["seed"] for r in records if r["arm"] == s["arm"] and r.get("evaluation_missing")}
            lines.append(f"| {s['arm']} | " + " | ".join(
                (f"{100 * acc[x]:.2f}" + ("*" if x in missing else "")) if x in acc else "—" for x in seeds) + " |")
        if any(r.get("evaluation_missing") for r in records):
            lines += ["", "\\* recorded by an earlier invocation; its evaluation file (the per-item predictions) "
                      "is missing: `--resume` reruns the run."]
    lines += ["", "## Command", "", "```", meta.get("command", ""), "```", ""]
    return "\n".join(lines)


def plot(summary: list[dict], records: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(summary) + 2), 4.5))
    for i, s in enumerate(summary):
        accs = [100 * r["accuracy"] for r in records if r["arm"] == s["arm"]]
        color = "tab:gray" if s["baseline"] else "tab:blue"
        if accs:
            offsets = [(j - (len(accs) - 1) / 2) * 0.06 for j in range(len(accs))]
            ax.scatter([i + o for o in offsets], accs, s=18, color=color, alpha=0.6, zorder=3)
        if s["n"]:
            std = 100 * s["accuracy_std"] if s["n"] > 1 else 0.0
            ax.errorbar([i + 0.25], [100 * s["accuracy_mean"]], yerr=[std], fmt="D", color=color,
                        capsize=5, markersize=6, zorder=4)
        if s["p"] is not None and not math.isnan(s["p"]):
            ax.annotate(f"p={s['p']:.3g}", (i, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, -12), textcoords="offset points", ha="center", fontsize=8)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.12 * (hi - lo))  # room for the p-values above the points
    ax.set_xticks(range(len(summary)))
    ax.set_xticklabels([s["arm"].replace(" ", "\n") for s in summary], fontsize=8)
    ax.set_xlim(-0.6, len(summary) - 0.4)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "accuracy per seed (points) and mean ± std", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_eval(path: Path) -> dict:
    """An evaluation's results JSON, gzipped (``.json.gz``, what sweeps write) or not."""
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def write_reports(out: Path, arms: list, records: list[dict], meta: dict) -> list[dict]:
    summary = summarize(arms, records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_json_safe(
        {**meta, "arms": [{"name": a.name, "slug": a.slug, "baseline": a.baseline,
                           "overrides": [f"{k}={v}" for k, v in a.overrides]} for a in arms],
         "summary": summary, "runs": records}), indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(summary, records, meta))
    plot(summary, records, out / "results.png", title=f"{meta.get('name', '')}: accuracy per seed, mean ± std")
    return summary
