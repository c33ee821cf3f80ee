"""Deterministic subsets of a .jsonl file (the low-data runs: 1/16, 1/4 of synth_train).

    python tools/make_subset.py ../shared/data/llm_jepa/synth_train.jsonl --fractions 1/16 1/4 \\
        [--seed 0] [--out-dir outputs/subsets]
    # -> outputs/subsets/synth_train_1of16.jsonl, outputs/subsets/synth_train_1of4.jsonl

The lines kept are the first round(n * fraction) of one seeded permutation of the n lines,
written in their file order: the same files for the same seed, and a smaller fraction is a
subset of every larger one (1/16 within 1/4 within all). Prints each file and its line count.
"""

from __future__ import annotations

import argparse
import random
from fractions import Fraction
from pathlib import Path

from titan_jepa.errors import DataError, UserError, run_main


def subset_lines(lines: list[str], fraction: Fraction, seed: int) -> list[str]:
    """The lines of ``fraction`` of ``lines`` (nested across fractions for one seed), in file order."""
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    keep = sorted(order[:round(len(lines) * fraction)])
    return [lines[i] for i in keep]


def write_subsets(path: Path, fractions: list[str], seed: int, out_dir: Path) -> list[tuple[Path, int]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a .jsonl file")
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for text in fractions:
        try:
            f = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"--fractions '{text}' is not a fraction; write e.g. 1/16 or 0.25") from None
        if not 0 < f <= 1:
            raise UserError(f"--fractions '{text}' must be in (0, 1]")
        keep = subset_lines(lines, f, seed)
        out = out_dir / f"{path.stem}_{f.numerator}of{f.denominator}.jsonl"
        text = "".join(x + "\n" for x in keep)
        if not (out.is_file() and out.read_text() == text):  # runs may be reading the same file
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(out)
        written.append((out, len(keep)))
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--fractions", nargs="+", default=["1/16", "1/4"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("outputs/subsets"))
    a = p.parse_args(argv)
    for out, n in run_main(lambda: write_subsets(a.path, a.fractions, a.seed, a.out_dir)):
        print(f"{out}: {n} lines")


if __name__ == "__main__":
    main()
