"""Plot a run's metrics.jsonl (loss, JEPA loss, throughput, learning rate and, for JEPA runs, the
collapse diagnostics: Pred/Target per-dimension std and effective rank) as one PNG.

    python tools/plot_metrics.py outputs/my_run/metrics.jsonl            # -> outputs/my_run/metrics.png
    python tools/plot_metrics.py outputs/a/metrics.jsonl outputs/b/metrics.jsonl -o compare.png

Several files are drawn on the same axes (one line per run, labelled by its run folder).
A panel whose metric no run logged (JEPA loss in a next-token run) says so instead of a line.
Needs matplotlib: pip install -e ".[plot]".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from titan_jepa.errors import DataError, UserError, run_main

# (title, metric keys tried in order, y label, log scale)
PANELS = [
    ("loss", ("loss",), "loss", False),
    ("next-token loss", ("ntp_loss", "loss"), "next-token loss", False),  # a next-token run's loss is it
    ("JEPA loss", ("jepa_loss",), "jepa loss", False),
    ("JEPA cosine, Pred(Enc(Text)) vs Enc(Code)", ("jepa_cos",), "cosine", False),
    ("throughput", ("tokens_per_s",), "tokens/s per device", False),
    ("learning rate", ("lr",), "lr", False),
]
# (title, (key, line label, line style) each drawn, y label): JEPA collapse diagnostics
MULTI_PANELS = [
    ("JEPA embedding std (per dim, mean)", (("jepa_pred_std", "pred", "-"), ("jepa_target_std", "target", "--")),
     "std"),
    ("JEPA effective rank", (("jepa_pred_erank", "pred", "-"), ("jepa_target_erank", "target", "--")),
     "exp(entropy of singular values)"),
]


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a torn last line (a run still writing) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not rows:
        raise DataError(f"{path}: no metrics rows")
    # a resumed run appends: keep the last value of each step; validation rows (val/...)
    # of a step join its training row
    by_step: dict[int, dict] = {}
    for r in rows:
        if "step" in r:
            by_step.setdefault(int(r["step"]), {}).update(r)
    return [by_step[s] for s in sorted(by_step)]


def run_label(path: Path) -> str:
    """A run's name: its folder for <run>/metrics.jsonl, else the file's own name less
    ".metrics.jsonl" (a sweep's evals/<arm>_s<seed>.metrics.jsonl)."""
    if path.name == "metrics.jsonl":
        return path.parent.name or str(path)
    return path.name.removesuffix(".jsonl").removesuffix(".metrics")


def plot(paths: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(run_label(p), read_metrics(p)) for p in paths]
    fig, axes = plt.subplots(4, 2, figsize=(11, 13), constrained_layout=True)
    for ax, (title, series, ylabel) in zip(axes.flat[len(PANELS):], MULTI_PANELS):
        drawn = False
        for i, (label, rows) in enumerate(runs):
            for key, name, style in series:
                pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if pts:
                    steps, values = zip(*pts)
                    ax.plot(steps, values, style, color=f"C{i}", linewidth=1.2,
                            label=f"{label} {name}" if len(runs) > 1 else name)
                    drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if drawn:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{series[0][0]}' in the metrics", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    for ax, (title, keys, ylabel, log) in zip(axes.flat, PANELS):
        drawn = False
        for i, (label, rows) in enumerate(runs):
            for key in keys:
                pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
                if pts:
                    steps, values = zip(*pts)
                    ax.plot(steps, values, color=f"C{i}", label=label, linewidth=1.2)
                    drawn = True
                    break
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        if drawn:
            ax.grid(alpha=0.3)
            if len(runs) > 1:
                ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no '{keys[0]}' in the metrics", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl files (or run folders)")
    ap.add_argument("-o", "--out", type=Path, help="PNG path (default: metrics.png next to the first file)")
    args = ap.parse_args(argv)
    print(run_main(lambda: plot_runs(args.metrics, args.out)))


def plot_runs(metrics: list[Path], out: Path | None) -> Path:
    paths = [p / "metrics.jsonl" if p.is_dir() else p for p in metrics]
    for p in paths:
        if not p.is_file():
            raise DataError(f"{p} does not exist; pass a run's metrics.jsonl or its run folder")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError('plotting needs matplotlib: pip install matplotlib (or pip install -e ".[plot]")') from None
    return plot(paths, out or paths[0].with_name("metrics.png"))


if __name__ == "__main__":
    main()
