"""The JEPA collapse at a glance: the cosine and effective ranks of LLM-JEPA runs at a few steps.

    python tools/collapse_report.py sweeps/i22_main/evals/llm-jepa_s*.metrics.jsonl [--steps 10 50]

Reads training metrics (``metrics.jsonl`` of a run, or the copy a sweep keeps beside its
evaluations) and prints one markdown table: for every file that logged the JEPA term, at each
of ``--steps`` (the first logged step at or after it) and at its last logged step, the cosine
between Pred(Enc(Text)) and Enc(Code) (``jepa_cos``) and the effective rank of the predictions
and of the targets (``jepa_pred_erank``, ``jepa_target_erank``). A cosine near 1 with effective
ranks near 1 is the collapse docs/results.md describes. Files without those fields (next-token,
STP) are listed as such, not dropped silently.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FIELDS = ("jepa_cos", "jepa_pred_erank", "jepa_target_erank")


def read_rows(path: Path) -> list[dict]:
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (give a metrics.jsonl or a run folder)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"error: {path}:{n} is not JSON ({e.msg})") from None
    return rows


def collapse(path: Path, steps: list[int]) -> dict:
    """{"run", "points": [(step, cos, pred_erank, target_erank), ...]} (points empty: no JEPA)."""
    rows = [r for r in read_rows(path) if all(k in r for k in FIELDS) and "step" in r]
    rows.sort(key=lambda r: r["step"])
    name = path.name.removesuffix(".jsonl").removesuffix(".metrics") if path.is_file() else path.name
    picked = []
    for s in steps:
        r = next((r for r in rows if r["step"] >= s), None)
        if r is not None and r not in picked:
            picked.append(r)
    if rows and rows[-1] not in picked:
        picked.append(rows[-1])
    return {"run": name, "points": [(r["step"], *(float(r[k]) for k in FIELDS)) for r in picked]}


def markdown(reports: list[dict]) -> str:
    lines = ["| run | step | cosine | prediction erank | target erank |", "| --- | ---: | ---: | ---: | ---: |"]
    for rep in reports:
        if not rep["points"]:
            lines.append(f"| {rep['run']} | — | no JEPA metrics | | |")
        for step, cos, pe, te in rep["points"]:
            lines.append(f"| {rep['run']} | {step} | {cos:.4f} | {pe:.2f} | {te:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl files or run folders")
    p.add_argument("--steps", nargs="+", type=int, default=[10, 50],
                   help="steps to report besides the last (default: 10 50)")
    a = p.parse_args(argv)
    print(markdown([collapse(m, a.steps) for m in a.metrics]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
