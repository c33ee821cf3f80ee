"""Run a training config over seeds and a grid of overrides, evaluate every run, and report
mean +- std per arm with the paired one-tailed t-test of each arm against the baseline.

    python tools/sweep.py --config train_configs/llama3_1b_jepa_synth.toml \\
        --seeds 82 23 37 84 4 --grid jepa.lambda=1,2 jepa.k=1,3 --baseline jepa.enable=false \\
        --eval-data ../shared/data/llm_jepa/synth_test.jsonl --out sweeps/synth

Arms: the baseline (the config + ``--baseline`` overrides) and one arm per point of the
Cartesian product of ``--grid`` (the config + that point's overrides; no grid: the config
as it is). Nothing is implied: an arm trains JEPA only if the config (or its overrides)
enables it. ``--set section.key=value`` applies to every arm (e.g. a tiny smoke test).

Runs go seed by seed (every arm on the first seed, then the second, ...), one at a time or
``--jobs N`` at once (each gets 1/N of the CPU threads, or its own ``--nproc`` GPUs). Each run:
  1. train: ``python -m titan_jepa.train --config X <--set> <arm overrides> --job.seed S
     --job.name <arm>_s<S> --job.dump_folder <out>/runs --checkpoint.enable true
     --checkpoint.model_only_export true`` (``torchrun --standalone`` with ``--nproc N``),
     log in ``<out>/logs/<arm>_s<S>.train.log``;
  2. evaluate the final model-only export ``<run>/<checkpoint.folder>/model-only/step-N``
     with ``python -m titan_jepa.eval --config <run>/config.toml`` into
     ``<out>/evals/<arm>_s<S>.json`` (log: ``<out>/logs/<arm>_s<S>.eval.log``);
  3. print one line: arm, seed, accuracy, final training loss (last row of the run's
     metrics.jsonl), seconds.

After every run the reports are rewritten: ``<out>/results.json`` (every number),
``<out>/results.md`` (one row per arm: overrides, seeds, accuracy mean +- sample std,
final loss mean, paired one-tailed t-test p of arm > baseline over the seeds both have,
and the command line) and ``<out>/results.png`` (per-seed accuracies with mean +- std).

``--resume`` skips the runs whose evaluation JSON exists; a run that was interrupted
resumes its training from its latest checkpoint. Without it, an existing run folder stops
the sweep (nothing is overwritten). ``--dry-run`` prints the arms and the commands only.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from titan_jepa.config import ConfigError, load_config  # noqa: E402
from titan_jepa.stats import mean_std, paired_t_test_one_tailed  # noqa: E402

BASELINE = "baseline"


class SweepError(RuntimeError):
    """A user-facing sweep error: one line naming the fix."""


# ---- arguments ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/sweep.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training TOML shared by every arm")
    p.add_argument("--seeds", type=int, nargs="+", default=[82, 23, 37, 84, 4],
                   help="job.seed of each run (default: the paper's 82 23 37 84 4)")
    p.add_argument("--grid", nargs="*", default=[], metavar="SECTION.KEY=V1,V2",
                   help="one axis per argument; the arms are their Cartesian product")
    p.add_argument("--baseline", nargs="*", default=None, metavar="SECTION.KEY=V",
                   help="overrides of the baseline arm (e.g. jepa.enable=false); "
                        "omitted: no baseline arm and no t-test")
    p.add_argument("--set", nargs="*", default=[], dest="sets", metavar="SECTION.KEY=V",
                   help="overrides applied to every arm")
    p.add_argument("--eval-data", required=True, help='test .jsonl of {"messages": [...]} lines')
    p.add_argument("--scorer", default="auto", help="eval scorer (auto picks from the data file name)")
    p.add_argument("--eval-limit", type=int, default=-1, help="score the first N test samples only")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--nproc", type=int, default=1,
                   help="training processes per run (> 1: torchrun --standalone --nproc_per_node N)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (CPU threads split between them; on GPUs, --nproc GPUs each)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<config name>)")
    p.add_argument("--resume", action="store_true", help="skip runs whose evaluation JSON exists")
    p.add_argument("--dry-run", action="store_true", help="print the arms and commands, run nothing")
    return p.parse_args(argv)


def parse_override(text: str, what: str) -> tuple[str, str]:
    """'section.key=value' -> ('section.key', 'value')."""
    name, eq, value = text.partition("=")
    if not eq or "." not in name or not name.split(".", 1)[0] or not name.split(".", 1)[1]:
        raise SweepError(f"{what} '{text}' is not section.key=value (e.g. jepa.lambda=2)")
    return name, value


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """['jepa.lambda=1,2', 'jepa.k=1,3'] -> [('jepa.lambda', ['1', '2']), ('jepa.k', ['1', '3'])].
    Values are separated by commas (list-valued keys belong in --set or --baseline)."""
    axes, seen = [], set()
    for item in items:
        name, values = parse_override(item, "--grid")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise SweepError(f"--grid '{item}' has no values; write {name}=V1,V2")
        if name in seen:
            raise SweepError(f"--grid names {name} twice; give it one axis: {name}=V1,V2,...")
        seen.add(name)
        axes.append((name, vals))
    return axes


# ---- arms and runs ------------------------------------------------------------------------
@dataclass
class Arm:
    name: str  # the label in the table, e.g. "jepa.lambda=1 jepa.k=3" or "baseline"
    slug: str  # a file-name-safe form, used in job names
    overrides: list[tuple[str, str]] = field(default_factory=list)
    baseline: bool = False

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides) or "(config as is)"


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9.+-]+", "-", text.replace("=", "")).strip("-")
    return s or "config"


def build_arms(grid: list[tuple[str, list[str]]], baseline: list[tuple[str, str]] | None) -> list[Arm]:
    arms = []
    if baseline is not None:
        arms.append(Arm(BASELINE, BASELINE, list(baseline), baseline=True))
    names = [n for n, _ in grid]
    for values in itertools.product(*[v for _, v in grid]):
        overrides = list(zip(names, values))
        label = " ".join(f"{k}={v}" for k, v in overrides) or "config"
        slug = _slug("_".join(f"{k.split('.', 1)[1]}{v}" for k, v in overrides)) if overrides else "config"
        arms.append(Arm(label, slug, overrides))
    slugs = [a.slug for a in arms]
    for i, a in enumerate(arms):  # distinct job names even if two values slug alike
        if slugs.count(a.slug) > 1:
            a.slug = f"{a.slug}-{i}"
    return arms


def run_name(arm: Arm, seed: int) -> str:
    return f"{arm.slug}_s{seed}"


def _cli(overrides: list[tuple[str, str]]) -> list[str]:
    return [f"--{k}={v}" for k, v in overrides]


def train_overrides(a: argparse.Namespace, arm: Arm, seed: int, runs: Path) -> list[tuple[str, str]]:
    """Every override of one run, in the order they apply (later wins)."""
    sets = [parse_override(s, "--set") for s in a.sets]
    forced = [("job.seed", str(seed)), ("job.name", run_name(arm, seed)), ("job.dump_folder", str(runs)),
              ("checkpoint.enable", "true"), ("checkpoint.model_only_export", "true")]
    return sets + arm.overrides + forced


def train_command(a: argparse.Namespace, arm: Arm, seed: int, runs: Path) -> list[str]:
    if a.nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={a.nproc}", "-m", "titan_jepa.train"]
    else:
        launcher = [sys.executable, "-m", "titan_jepa.train"]
    return launcher + ["--config", a.config] + _cli(train_overrides(a, arm, seed, runs))


def eval_command(a: argparse.Namespace, run_dir: Path, checkpoint: Path, out_json: Path) -> list[str]:
    cmd = [sys.executable, "-m", "titan_jepa.eval", "--config", str(run_dir / "config.toml"),
           "--checkpoint", str(checkpoint), "--data", a.eval_data, "--scorer", a.scorer,
           "--batch-size", str(a.eval_batch_size), "--max-new-tokens", str(a.max_new_tokens),
           "--out", str(out_json), "--no-progress"]
    if a.eval_limit >= 0:
        cmd += ["--limit", str(a.eval_limit)]
    return cmd


def check_configs(a: argparse.Namespace, arms: list[Arm], runs: Path) -> None:
    """Load every arm's config as its runs will (cheap), so a typo stops the sweep at once."""
    for arm in arms:
        ovr = [(*k.split(".", 1), v) for k, v in train_overrides(a, arm, a.seeds[0], runs)]
        try:
            load_config(a.config, ovr)
        except ConfigError as e:
            raise SweepError(f"arm '{arm.name}': {e}") from None


def final_checkpoint(run_dir: Path) -> Path:
    """The run's final model-only export (else its latest full checkpoint)."""
    from titan_jepa.checkpoint import checkpoint_folder, complete_checkpoints

    cfg = load_config(run_dir / "config.toml")
    folder = checkpoint_folder(cfg)
    for where in (folder / "model-only", folder):
        found = complete_checkpoints(where)
        if found:
            return found[max(found)]
    raise SweepError(f"{run_dir}: the run left no checkpoint under {folder}")


def final_loss(run_dir: Path) -> tuple[float, int]:
    """(loss, step) of the last logged step of the run's metrics.jsonl; (nan, -1) if none."""
    path = run_dir / "metrics.jsonl"
    best = (math.nan, -1)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line
                continue
            if "loss" in row and row.get("step", -1) >= best[1]:
                best = (float(row["loss"]), int(row["step"]))
    return best


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def slot_envs(jobs: int, nproc: int) -> list[dict]:
    """The environment of each of ``jobs`` concurrent runs: its share of the CPU threads and,
    on a GPU machine, its own ``nproc`` GPUs (CUDA_VISIBLE_DEVICES)."""
    if jobs == 1:
        return [{}]
    envs = [{} for _ in range(jobs)]
    if "OMP_NUM_THREADS" not in os.environ:
        for e in envs:
            e["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    import torch

    n_gpu = torch.cuda.device_count()  # NVML: no CUDA context in this process
    if n_gpu:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] \
            or [str(i) for i in range(n_gpu)]
        if jobs * nproc > len(visible):
            raise SweepError(f"--jobs {jobs} x --nproc {nproc} needs {jobs * nproc} GPUs, "
                             f"{len(visible)} are visible; lower --jobs")
        for k, e in enumerate(envs):
            e["CUDA_VISIBLE_DEVICES"] = ",".join(visible[k * nproc:(k + 1) * nproc])
    return envs


def _run_logged(cmd: list[str], log: Path, what: str, env: dict | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(env))
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise SweepError(f"{what} failed (exit {rc}): {tail[0]}  [full log: {log}]")


# ---- reports ------------------------------------------------------------------------------
def summarize(arms: list[Arm], records: list[dict]) -> list[dict]:
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
        s = {"arm": arm.name, "overrides": arm.label, "baseline": arm.baseline, "n": len(accs),
             "seeds": sorted(runs), "accuracy_mean": mean, "accuracy_std": std,
             "final_loss_mean": mean_std(losses)[0], "t": None, "p": None, "n_pairs": 0}
        if base is not None and not arm.baseline:
            shared = sorted(set(runs) & set(by_arm[base.name]))
            t, p = paired_t_test_one_tailed([runs[x]["accuracy"] for x in shared],
                                            [by_arm[base.name][x]["accuracy"] for x in shared])
            s.update(t=t, p=p, n_pairs=len(shared))
        out.append(s)
    return out


def _num(x, fmt: str) -> str:
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
    lines += ["| arm | overrides | seeds | accuracy % (mean ± std) | final loss (mean) | "
              "p (arm > baseline) | t |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        acc = "—" if s["n"] == 0 else (f"{100 * s['accuracy_mean']:.2f} ± "
                                        f"{_num(100 * s['accuracy_std'] if s['n'] > 1 else None, '.2f')}")
        if s["baseline"] or not has_base:
            p, t = "—", "—"
        else:
            p = _num(s["p"], ".4g") + (f" ({s['n_pairs']} pairs)" if s["n_pairs"] != s["n"] else "")
            t = _num(s["t"], ".3f")
        ovr = s["overrides"].replace("|", "\\|")
        lines.append(f"| {s['arm']} | `{ovr}` | {s['n']} | {acc} | {_num(s['final_loss_mean'], '.4f')} | {p} | {t} |")
    lines += ["", "Accuracy: mean over seeds ± sample standard deviation (n - 1). p: paired one-tailed "
              "t-test over the seeds both the arm and the baseline have (H1: the arm's accuracy is "
              "higher; scipy.stats.ttest_rel(arm, baseline, alternative='greater')); if every paired "
              "difference is the same, p = 0 when it is positive and 1 otherwise; fewer than 2 pairs: —."]
    if records:
        seeds = sorted({r["seed"] for r in records})
        lines += ["", "## Per seed (accuracy %)", "",
                  "| arm | " + " | ".join(f"seed {x}" for x in seeds) + " |",
                  "| --- |" + " ---: |" * len(seeds)]
        for s in summary:
            acc = {r["seed"]: r["accuracy"] for r in records if r["arm"] == s["arm"]}
            lines.append(f"| {s['arm']} | " + " | ".join(
                f"{100 * acc[x]:.2f}" if x in acc else "—" for x in seeds) + " |")
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


def write_reports(out: Path, arms: list[Arm], records: list[dict], meta: dict) -> list[dict]:
    summary = summarize(arms, records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_json_safe(
        {**meta, "arms": [{"name": a.name, "slug": a.slug, "baseline": a.baseline,
                           "overrides": [f"{k}={v}" for k, v in a.overrides]} for a in arms],
         "summary": summary, "runs": records}), indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(summary, records, meta))
    plot(summary, records, out / "results.png", title=f"{meta.get('name', '')}: accuracy per seed, mean ± std")
    return summary


# ---- the sweep ----------------------------------------------------------------------------
def run_one(a: argparse.Namespace, arm: Arm, seed: int, out: Path, env: dict | None = None) -> dict:
    name = run_name(arm, seed)
    runs, run_dir = out / "runs", out / "runs" / name
    eval_json, side = out / "evals" / f"{name}.json", out / "evals" / f"{name}.run.json"
    t0 = time.time()
    skipped = a.resume and eval_json.is_file()
    if not skipped:
        _run_logged(train_command(a, arm, seed, runs), out / "logs" / f"{name}.train.log", f"training {name}",
                    env)
        t1 = time.time()
        ckpt = final_checkpoint(run_dir)
        _run_logged(eval_command(a, run_dir, ckpt, eval_json), out / "logs" / f"{name}.eval.log",
                    f"evaluation of {name}", env)
        timing = {"train_seconds": round(t1 - t0, 2), "eval_seconds": round(time.time() - t1, 2),
                  "checkpoint": str(ckpt)}
        side.write_text(json.dumps(timing, indent=2) + "\n")
    res = json.loads(eval_json.read_text())
    loss, step = final_loss(run_dir)
    timing = json.loads(side.read_text()) if side.is_file() else {}
    return {"arm": arm.name, "slug": arm.slug, "seed": seed, "run": name,
            "accuracy": res["accuracy"], "correct": res.get("correct"), "n": res.get("n"),
            "scorer": res.get("scorer"), "final_loss": loss, "final_step": step,
            "run_dir": str(run_dir), "eval_json": str(eval_json), "skipped": skipped, **timing}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    try:
        if not Path(a.config).is_file():
            raise SweepError(f"--config '{a.config}' does not exist")
        if not a.dry_run and not Path(a.eval_data).is_file():
            raise SweepError(f"--eval-data '{a.eval_data}' does not exist")
        if len(set(a.seeds)) != len(a.seeds):
            raise SweepError(f"--seeds {' '.join(map(str, a.seeds))} repeats a seed")
        if a.nproc < 1 or a.jobs < 1:
            raise SweepError("--nproc and --jobs must be >= 1")
        grid = parse_grid(a.grid)
        baseline = None if a.baseline is None else [parse_override(s, "--baseline") for s in a.baseline]
        arms = build_arms(grid, baseline)
        out = Path(a.out or Path("sweeps") / Path(a.config).stem)
        runs = out / "runs"
        check_configs(a, arms, runs)
        command = shlex.join(["python", "tools/sweep.py", *argv])
        meta = {"name": out.name, "config": a.config, "seeds": a.seeds, "grid": a.grid,
                "baseline": a.baseline, "set": a.sets, "eval_data": a.eval_data, "scorer": a.scorer,
                "eval_limit": a.eval_limit, "command": command}
        total = len(arms) * len(a.seeds)
        print(f"sweep {out}: {len(arms)} arm(s) x {len(a.seeds)} seed(s) = {total} run(s)", flush=True)
        for arm in arms:
            print(f"  {arm.name}: {arm.label}", flush=True)
        if a.dry_run:
            for arm in arms:
                for seed in a.seeds:
                    print(shlex.join(train_command(a, arm, seed, runs)))
            print(shlex.join(eval_command(a, runs / "<run>", runs / "<run>/checkpoint/model-only/step-N",
                                          out / "evals" / "<run>.json")))
            return 0
        if not a.resume:
            existing = [run_name(arm, s) for arm in arms for s in a.seeds if (runs / run_name(arm, s)).exists()]
            if existing:
                raise SweepError(f"{runs / existing[0]} already exists; pass --resume to continue "
                                 f"this sweep, or choose another --out")
        envs = slot_envs(a.jobs, a.nproc)
        # seed-major order: a sweep stopped early still has every arm on its first seeds
        todo = [(arm, seed) for seed in a.seeds for arm in arms]
        order = {(arm.name, seed): i for i, (arm, seed) in enumerate(todo)}
        records, t_start = [], time.time()
        lock, slots, failed = threading.Lock(), queue.Queue(), []
        for k in range(len(envs)):
            slots.put(k)

        def work(arm: Arm, seed: int) -> None:
            if failed:  # a run failed: start no new ones
                return
            slot = slots.get()
            try:
                t0 = time.time()
                rec = run_one(a, arm, seed, out, envs[slot])
            except Exception as e:  # noqa: BLE001 - reported after the runs in flight end
                failed.append(e)
                return
            finally:
                slots.put(slot)
            with lock:
                records.append(rec)
                records.sort(key=lambda r: order[(r["arm"], r["seed"])])
                note = " (resumed: already evaluated)" if rec["skipped"] else ""
                print(f"[{len(records)}/{total}] {arm.name} seed {seed}: accuracy {rec['accuracy']:.4f} "
                      f"({rec['correct']}/{rec['n']}), final loss {_num(rec['final_loss'], '.4f')}, "
                      f"{time.time() - t0:.1f}s{note}", flush=True)
                write_reports(out, arms, records, meta)

        if a.jobs == 1:
            for arm, seed in todo:
                work(arm, seed)
        else:
            with ThreadPoolExecutor(a.jobs) as pool:
                list(pool.map(lambda x: work(*x), todo))
        if failed:
            raise failed[0] if isinstance(failed[0], (SweepError, ConfigError)) else SweepError(repr(failed[0]))
        summary = write_reports(out, arms, records, meta)
        print(f"done in {time.time() - t_start:.0f}s: {out / 'results.md'}, {out / 'results.json'}, "
              f"{out / 'results.png'}", flush=True)
        for s in summary:
            p = "" if s["p"] is None else f", p(> baseline) {_num(s['p'], '.4g')}"
            print(f"  {s['arm']}: {100 * s['accuracy_mean']:.2f} ± "
                  f"{_num(100 * s['accuracy_std'], '.2f')} % over {s['n']} seed(s){p}", flush=True)
        return 0
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
