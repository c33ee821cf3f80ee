"""Write small deterministic demo data sets (no downloads); see tools/demo_data.py.

    python tools/make_demo_data.py --out demo_data --seed 0

Writes regex_train.jsonl and regex_test.jsonl (chat), corpus.jsonl (documents) and
paraphrase_train.jsonl (pairs) under --out; the same seed always gives byte-identical files.
"""

from __future__ import annotations

import argparse

from demo_data import make_demo_data

__all__ = ["make_demo_data"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--n-docs", type=int, default=3000)
    a = p.parse_args()
    out = make_demo_data(a.out, a.seed, a.n_train, a.n_test, a.n_docs)
    for f in sorted(out.glob("*.jsonl")):
        print(f"wrote {f} ({f.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
