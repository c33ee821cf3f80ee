"""Deterministic subsets of a .jsonl file (the low-data runs: 1/16, 1/4 of synth_train; a
fixed-size training subset and a held-out slice for choosing the learning rate).

    python tools/make_subset.py ../shared/data/llm_jepa/synth_train.jsonl --fractions 1/16 1/4 \\
        [--seed 0] [--out-dir outputs/subsets]
    # -> outputs/subsets/synth_train_1of16.jsonl, outputs/subsets/synth_train_1of4.jsonl
    python tools/make_subset.py ../shared/data/llm_jepa/synth_train.jsonl --count 1000 --holdout 200
    # -> outputs/subsets/synth_train_n1000.jsonl, outputs/subsets/synth_train_n1000_holdout200.jsonl

The lines kept are the first round(n * fraction) (or --count) of one seeded permutation of
the n lines, written in their file order: the same files for the same seed, and a smaller
subset is within every larger one (1/16 within 1/4 within all). ``--holdout M`` also writes
the M lines that follow the --count ones in the permutation: disjoint from the subset (and
from every smaller one), for choosing hyperparameters without the test set. Prints each
file and its line count.
"""

from __future__ import annotations

import argparse
import random
from fractions import Fraction
from pathlib import Path

from titan_jepa.errors import DataError, UserError, run_main


def subset_lines(lines: list[str], fraction: Fraction, seed: int, start: Fraction = Fraction(0)) -> list[str]:
    """The lines of ``fraction`` of ``lines`` (nested across fractions for one seed), in file
    order; ``start`` skips that fraction of the permutation first (a disjoint slice)."""
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    first = round(len(lines) * start)
    keep = sorted(order[first:first + round(len(lines) * fraction)])
    return [lines[i] for i in keep]


def _write(out: Path, keep: list[str]) -> None:
    text = "".join(x + "\n" for x in keep)
    if not (out.is_file() and out.read_text() == text):  # runs may be reading the same file
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)


def write_counted(path: Path, count: int, holdout: int, seed: int, out_dir: Path) -> list[tuple[Path, int]]:
    """``--count N [--holdout M]``: the first N lines of the permutation and the M after them."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a .jsonl file")
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    if count < 1 or holdout < 0 or count + holdout > len(lines):
        raise UserError(f"--count {count} + --holdout {holdout} must be positive and at most the "
                        f"{len(lines)} lines of {path}")
    out_dir.mkdir(parents=True, exist_ok=True)
    n = Fraction(len(lines))
    written = [(out_dir / f"{path.stem}_n{count}.jsonl", subset_lines(lines, count / n, seed))]
    if holdout:
        written.append((out_dir / f"{path.stem}_n{count}_holdout{holdout}.jsonl",
                        subset_lines(lines, holdout / n, seed, start=count / n)))
    for out, keep in written:
        _write(out, keep)
    return [(out, len(keep)) for out, keep in written]


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
        _write(out, keep)
        written.append((out, len(keep)))
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path)
    p.add_argument("--fractions", nargs="+", default=["1/16", "1/4"])
    p.add_argument("--count", type=int, help="instead of --fractions: the first N lines of the permutation")
    p.add_argument("--holdout", type=int, default=0, help="with --count: also the M lines after them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("outputs/subsets"))
    a = p.parse_args(argv)
    if a.count is not None:
        made = run_main(lambda: write_counted(a.path, a.count, a.holdout, a.seed, a.out_dir))
    else:
        made = run_main(lambda: write_subsets(a.path, a.fractions, a.seed, a.out_dir))
    for out, n in made:
        print(f"{out}: {n} lines")


if __name__ == "__main__":
    main()
