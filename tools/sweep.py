"""Run a training config over seeds and a grid of overrides, evaluate every run, and report
mean +- std per arm with the paired one-tailed t-test of each arm against the baseline.

    python tools/sweep.py --config train_configs/llama3_1b_jepa_synth.toml \\
        --seeds 82 23 37 84 4 --grid jepa.lambda=1,2 jepa.k=1,3 --baseline jepa.enable=false \\
        --eval-data ../shared/data/llm_jepa/synth_test.jsonl --out sweeps/synth

Arms: the baseline (the config + ``--baseline`` overrides), one arm per point of the
Cartesian product of ``--grid`` (the config + that point's overrides; no grid and no
``--arm``: the config as it is), and one arm per ``--arm "NAME section.key=v ..."`` (arms
that differ in several keys at once, e.g. next-token vs LLM-JEPA vs STP in one sweep). Nothing is implied: an arm trains JEPA only if the config (or its overrides)
enables it. ``--set section.key=value`` applies to every arm (e.g. a tiny smoke test).

Runs go seed by seed (every arm on the first seed, then the second, ...), one at a time or
``--jobs N`` at once (each gets 1/N of the CPU threads, or its own ``--nproc`` GPUs; with
``--share-gpus`` every run sees all of them: several small runs on one GPU). Each run:
  1. train: ``python -m titan_jepa.train --config X <--set> <arm overrides> --job.seed S
     --job.name <arm>_s<S> --job.dump_folder <out>/runs --checkpoint.enable true
     --checkpoint.model_only_export true`` (``torchrun --standalone`` with ``--nproc N``),
     log in ``<out>/logs/<arm>_s<S>.train.log``;
  2. evaluate the final model-only export ``<run>/<checkpoint.folder>/model-only/step-N``
     with ``python -m titan_jepa.eval --config <run>/config.toml`` into
     ``<out>/evals/<arm>_s<S>.json.gz`` (the eval's JSON, every prediction, gzipped: small
     enough to commit; log: ``<out>/logs/<arm>_s<S>.eval.log``), and the run's training
     curve copied to ``<out>/evals/<arm>_s<S>.metrics.jsonl`` (run folders are not committed);
  3. print one line: arm, seed, accuracy, final training loss (last row of the run's
     metrics.jsonl), seconds.

After every run the reports are rewritten: ``<out>/results.json`` (every number),
``<out>/results.md`` (one row per arm: overrides, seeds, accuracy mean +- sample std,
final loss mean, paired one-tailed t-test p of arm > baseline over the seeds both have,
and the command line) and ``<out>/results.png`` (per-seed accuracies with mean +- std).

``--report-only`` trains nothing and rewrites the reports from what is there. The reports never
drop a result: a run recorded in results.json whose evaluation file is gone (a machine that
ended before it was committed) stays in them, marked, until a ``--resume`` reruns it.
``--resume`` skips the runs whose evaluation JSON (``.json.gz``, or ``.json`` of older sweeps) exists; a run that was interrupted
resumes its training from its latest checkpoint. Without it, an existing run folder stops
the sweep (nothing is overwritten). ``--dry-run`` prints the arms and the commands only.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sweep_report import fmt_num, read_eval, write_reports  # tools/ is sys.path[0] under python tools/sweep.py

from titan_jepa.config import ConfigError, load_config
from titan_jepa.errors import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]

BASELINE = "baseline"


class SweepError(UserError):
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
    p.add_argument("--arm", action="append", default=[], dest="arms", metavar='"NAME SECTION.KEY=V ..."',
                   help="one more arm: a name, then its overrides (repeat for several arms)")
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
    p.add_argument("--drop-checkpoints", action="store_true",
                   help="delete each run's checkpoint folder once it is evaluated (its metrics, config and "
                        "logs stay): GBs a run for a 135M model, too many for a small disk")
    p.add_argument("--share-gpus", action="store_true",
                   help="the --jobs runs share the visible GPUs instead of taking --nproc each (small models: "
                        "several runs on one GPU keep it busier than one)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<config name>)")
    p.add_argument("--resume", action="store_true", help="skip runs whose evaluation JSON exists")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite results.json/.md/.png from the evaluations in <out>/evals and "
                        "the results recorded earlier (e.g. after joining the evals of two machines)")
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


def parse_arm(text: str) -> Arm:
    """'NAME section.key=v ...' -> an Arm of that name and those overrides."""
    name, *rest = text.split()
    if "=" in name or name == BASELINE:
        raise SweepError(f"--arm '{text}' must start with a name (not '{BASELINE}'), then section.key=value "
                         f"overrides, e.g. --arm \"jepa jepa.enable=true jepa.k=1\"")
    return Arm(name, _slug(name), [parse_override(x, "--arm") for x in rest])


def build_arms(grid: list[tuple[str, list[str]]], baseline: list[tuple[str, str]] | None,
               extra: list[Arm] = ()) -> list[Arm]:
    arms = []
    if baseline is not None:
        arms.append(Arm(BASELINE, BASELINE, list(baseline), baseline=True))
    arms += extra
    names = [n for n, _ in grid]
    for values in itertools.product(*[v for _, v in grid]) if grid or not extra else []:
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


def drop_checkpoints(run_dir: Path) -> None:
    """Delete the run's checkpoint folder (full checkpoints and model-only exports), nothing else."""
    from titan_jepa.checkpoint import checkpoint_folder

    folder = checkpoint_folder(load_config(run_dir / "config.toml"))
    if folder.resolve().is_relative_to(run_dir.resolve()):  # never a folder outside the run
        shutil.rmtree(folder, ignore_errors=True)


def final_checkpoint(run_dir: Path) -> Path:
    """The run's final model-only export (else its latest full checkpoint), which must be of
    its last step: a run stopped early (SIGTERM to the trainer saves its step and exits 0) is
    not evaluated as if it had finished."""
    from titan_jepa.checkpoint import checkpoint_folder, complete_checkpoints

    cfg = load_config(run_dir / "config.toml")  # the run's own: training.steps resolved
    folder = checkpoint_folder(cfg)
    for where in (folder / "model-only", folder):
        found = complete_checkpoints(where)
        if found:
            if max(found) < cfg.training.steps:
                raise SweepError(f"{run_dir.name} stopped after step {max(found)} of {cfg.training.steps} "
                                 f"(preempted?); rerun with --resume to continue it from that checkpoint")
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


def earlier_runs(out: Path) -> dict[str, dict]:
    """The runs of the sweep's results.json as it was before this invocation (read once at
    the start: the reports are rewritten after every run), by run name."""
    try:
        return {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"] if "run" in r}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def earlier_command(out: Path) -> str | None:
    try:
        return json.loads((out / "results.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def evaluation_file(out: Path, name: str) -> Path | None:
    """The run's evaluation JSON (gzipped, or plain in older sweeps), if it exists."""
    for path in (out / "evals" / f"{name}.json.gz", out / "evals" / f"{name}.json"):
        if path.is_file():
            return path
    return None


def recorded_without_evaluation(earlier: dict[str, dict], out: Path, name: str) -> dict | None:
    """The earlier record of run ``name`` when its evaluation file is gone, marked so."""
    rec = earlier.get(name)
    if rec is None or "accuracy" not in rec or evaluation_file(out, name) is not None:
        return None
    return {**{k: v for k, v in rec.items() if k != "skipped"}, "evaluation_missing": True}


def _recorded_loss(earlier: dict[str, dict], name: str) -> tuple[float, int]:
    """(final loss, step) of run ``name`` in the sweep's earlier results; (nan, -1) if none."""
    rec = earlier.get(name, {})
    loss = rec.get("final_loss")
    return (math.nan if loss is None else float(loss)), int(rec.get("final_step", -1))


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


def slot_envs(jobs: int, nproc: int, share_gpus: bool = False) -> list[dict]:
    """The environment of each of ``jobs`` concurrent runs: its share of the CPU threads and,
    on a GPU machine, its own ``nproc`` GPUs (CUDA_VISIBLE_DEVICES), or all of them with
    ``share_gpus``."""
    if jobs == 1:
        return [{}]
    envs = [{} for _ in range(jobs)]
    if "OMP_NUM_THREADS" not in os.environ:
        for e in envs:
            e["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    import torch

    n_gpu = torch.cuda.device_count()  # NVML: no CUDA context in this process
    if n_gpu and share_gpus:
        if nproc > n_gpu:
            raise SweepError(f"--nproc {nproc} needs {nproc} GPUs, {n_gpu} are visible; lower --nproc")
        return envs
    if n_gpu:
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] \
            or [str(i) for i in range(n_gpu)]
        if jobs * nproc > len(visible):
            raise SweepError(f"--jobs {jobs} x --nproc {nproc} needs {jobs * nproc} GPUs, "
                             f"{len(visible)} are visible; lower --jobs, or pass --share-gpus")
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


# ---- the sweep ----------------------------------------------------------------------------
def training_seconds(metrics: Path) -> float | None:
    """A run's training wall time over all its invocations: the sum of its metrics rows'
    ``interval_s`` (None when the file or the field is missing, as in runs logged before it)."""
    if not metrics.is_file():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    spans = [r["interval_s"] for r in rows if "interval_s" in r]
    return sum(spans) if spans else None


def run_one(a: argparse.Namespace, arm: Arm, seed: int, out: Path, env: dict | None = None) -> dict:
    name = run_name(arm, seed)
    runs, run_dir = out / "runs", out / "runs" / name
    eval_json, side = out / "evals" / f"{name}.json.gz", out / "evals" / f"{name}.run.json"
    found = evaluation_file(out, name)  # .json.gz, or .json of sweeps before they were gzipped
    if a.resume and found is not None:
        eval_json = found
    t0 = time.time()
    skipped = a.resume and eval_json.is_file()
    if not skipped:
        _run_logged(train_command(a, arm, seed, runs), out / "logs" / f"{name}.train.log", f"training {name}",
                    env)
        t1 = time.time()
        ckpt = final_checkpoint(run_dir)
        plain = eval_json.with_suffix("")  # the eval writes JSON; gzipped, it is small enough to commit
        _run_logged(eval_command(a, run_dir, ckpt, plain), out / "logs" / f"{name}.eval.log",
                    f"evaluation of {name}", env)
        with gzip.open(eval_json.with_name(eval_json.name + ".tmp"), "wb") as f:
            f.write(plain.read_bytes())
        eval_json.with_name(eval_json.name + ".tmp").replace(eval_json)
        plain.unlink()
        if (run_dir / "metrics.jsonl").is_file():  # the training curve, kept (and committed) beside it
            shutil.copyfile(run_dir / "metrics.jsonl", out / "evals" / f"{name}.metrics.jsonl")
        loss, step = final_loss(run_dir)
        train_s = training_seconds(run_dir / "metrics.jsonl")  # every invocation of a resumed run
        timing = {"train_seconds": round(t1 - t0 if train_s is None else train_s, 2), "eval_seconds": round(time.time() - t1, 2),
                  "checkpoint": str(ckpt), "final_loss": loss, "final_step": step}
        side.write_text(json.dumps(timing, indent=2) + "\n")
        if getattr(a, "drop_checkpoints", False):
            drop_checkpoints(run_dir)
    res = read_eval(eval_json)
    timing = json.loads(side.read_text()) if side.is_file() else {}
    loss, step = final_loss(run_dir)
    if step < 0:  # the run folder is gone (it is not committed): what was recorded when it ran
        loss, step = timing.get("final_loss", math.nan), timing.get("final_step", -1)
        if step < 0:
            loss, step = _recorded_loss(getattr(a, "earlier", {}), name)
    timing.pop("final_loss", None), timing.pop("final_step", None)
    return {"arm": arm.name, "slug": arm.slug, "seed": seed, "run": name,
            "accuracy": res["accuracy"], "correct": res.get("correct"), "n": res.get("n"),
            "scorer": res.get("scorer"), "final_loss": loss, "final_step": step,
            "run_dir": str(run_dir), "eval_json": str(eval_json), "skipped": skipped, **timing}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    return run_main(lambda: sweep(a, argv))


def sweep(a: argparse.Namespace, argv: list[str]) -> int:
    """The sweep of main(): a SweepError or ConfigError becomes 'error: ...' and exit code 2."""
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
    arms = build_arms(grid, baseline, [parse_arm(x) for x in a.arms])
    if len({arm.slug for arm in arms}) != len(arms):
        raise SweepError("two arms have the same name; give each --arm its own name")
    out = Path(a.out or Path("sweeps") / Path(a.config).stem)
    runs = out / "runs"
    check_configs(a, arms, runs)
    command = shlex.join(["python", "tools/sweep.py", *argv])
    meta = {"name": out.name, "config": a.config, "seeds": a.seeds, "grid": a.grid, "arm_options": a.arms,
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
    if a.report_only:
        a.resume = True
        meta["command"] = earlier_command(out) or command
    if not a.resume:
        existing = [run_name(arm, s) for arm in arms for s in a.seeds if (runs / run_name(arm, s)).exists()]
        if existing:
            raise SweepError(f"{runs / existing[0]} already exists; pass --resume to continue "
                             f"this sweep, or choose another --out")
    a.earlier = earlier_runs(out)
    envs = slot_envs(a.jobs, a.nproc, a.share_gpus)
    # seed-major order: a sweep stopped early still has every arm on its first seeds
    todo = [(arm, seed) for seed in a.seeds for arm in arms]
    order = {(arm.name, seed): i for i, (arm, seed) in enumerate(todo)}
    records, t_start = [], time.time()
    # results recorded earlier whose evaluation file is gone: kept in the reports until rerun
    kept = {(arm.name, seed): rec for arm, seed in todo
            if (rec := recorded_without_evaluation(a.earlier, out, run_name(arm, seed))) is not None}
    if a.report_only:
        todo = [(arm, seed) for arm, seed in todo if evaluation_file(out, run_name(arm, seed)) is not None]

    def reported() -> list[dict]:
        return sorted(records + list(kept.values()), key=lambda r: order[(r["arm"], r["seed"])])

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
            kept.pop((arm.name, seed), None)
            records.append(rec)  # reported() orders them
            note = " (resumed: already evaluated)" if rec.pop("skipped") else ""  # this invocation only
            print(f"[{len(records)}/{total}] {arm.name} seed {seed}: accuracy {rec['accuracy']:.4f} "
                  f"({rec['correct']}/{rec['n']}), final loss {fmt_num(rec['final_loss'], '.4f')}, "
                  f"{time.time() - t0:.1f}s{note}", flush=True)
            write_reports(out, arms, reported(), meta)

    if a.jobs == 1:
        for arm, seed in todo:
            work(arm, seed)
    else:
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda x: work(*x), todo))
    if failed:
        raise failed[0] if isinstance(failed[0], UserError) else SweepError(repr(failed[0]))
    for rec in kept.values():
        print(f"  {rec['run']}: accuracy {rec['accuracy']:.4f} as recorded earlier; its evaluation file is "
              f"missing (--resume reruns it)", flush=True)
    summary = write_reports(out, arms, reported(), meta)
    print(f"done in {time.time() - t_start:.0f}s: {out / 'results.md'}, {out / 'results.json'}, "
          f"{out / 'results.png'}", flush=True)
    for s in summary:
        p = "" if s["p"] is None else f", p(> baseline) {fmt_num(s['p'], '.4g')}"
        print(f"  {s['arm']}: {100 * s['accuracy_mean']:.2f} ± "
              f"{fmt_num(100 * s['accuracy_std'], '.2f')} % over {s['n']} seed(s){p}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
