"""Signals at random moments (issue 24 item 4): Ctrl-C (once or twice) and SIGTERM sent to a
training run that saves and prunes a checkpoint every step, at random times from its start
(imports, data loading, the first steps) through its saves and prunes. After each trial:

- the run ended with exit code 0 (stopped cleanly) or 130 (a second Ctrl-C, or Ctrl-C before
  the training loop) and printed no traceback;
- every ``step-N`` left in the checkpoint folder verifies (manifest and checksums); nothing
  that looks like a complete checkpoint is incomplete;
- the next launch resumes from the newest of them.

The trials are chained: each launch resumes the run the previous trial interrupted, and when
a run finishes, the next trial starts a new one. Every logged loss of an interrupted-and-
resumed run equals the uninterrupted run's loss of that step (bit for bit).

TITAN_JEPA_SIGNAL_TRIALS sets the number of trials (CI default 3; `TITAN_JEPA_SIGNAL_TRIALS=60
pytest tests/test_signal_trials.py` for the full check), TITAN_JEPA_SIGNAL_SEED the seed.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, tiny_config, write_toml
from titan_jepa.checkpoint import complete_checkpoints
from titan_jepa.checkpoint.files import verify_checkpoint

TRIALS = int(os.environ.get("TITAN_JEPA_SIGNAL_TRIALS", "3"))
SEED = int(os.environ.get("TITAN_JEPA_SIGNAL_SEED", "0"))
STEPS = 12


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _config(run_dir: Path, demo: Path, name: str) -> dict:
    cfg = tiny_config(run_dir, demo, training={"steps": STEPS})
    cfg["job"]["name"] = name
    # a save and a prune every step; an exported model at the end
    cfg["checkpoint"] = {"enable": True, "interval": 1, "keep_latest_k": 2}
    return cfg


def _losses(run: Path) -> dict[int, set[float]]:
    out: dict[int, set[float]] = {}
    path = run / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by the signal
                continue
            if "loss" in row:
                out.setdefault(row["step"], set()).add(row["loss"])
    return out


def _step_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name))


def test_signals_at_random_moments_leave_verified_checkpoints_that_resume(demo_dir, tmp_path):
    rng = random.Random(SEED)
    reference_cfg = _config(tmp_path / "ref", demo_dir, "ref")
    reference_cfg["checkpoint"] = {"enable": False}
    ref = subprocess.run([sys.executable, "-m", "titan_jepa.train", "--config",
                          str(write_toml(reference_cfg, tmp_path / "ref.toml"))],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    reference = {s: v.pop() for s, v in _losses(tmp_path / "ref" / "ref").items()}
    assert sorted(reference) == list(range(1, STEPS + 1))

    run_no, kinds, finished = 0, {}, 0
    for trial in range(TRIALS):
        name = f"run{run_no}"
        run = tmp_path / "runs" / name
        folder = run / "checkpoint"
        toml = write_toml(_config(tmp_path / "runs", demo_dir, name), tmp_path / f"{name}.toml")
        before = [int(p.name.split("-")[1]) for p in _step_folders(folder)]
        kind = rng.choice(["SIGINT", "SIGINT twice", "SIGTERM"])
        delay = rng.uniform(0.2, 6.0)  # from imports through a few saves and prunes
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "titan_jepa.train", "--config", str(toml)],
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGINT)
        if kind == "SIGINT twice":
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        what = f"trial {trial} ({kind} after {delay:.2f} s, {name})"
        assert proc.returncode in (0, 130, 143), f"{what}: exit {proc.returncode}\n{(out + err)[-3000:]}"
        assert "Traceback" not in err + out, f"{what}:\n{err[-3000:]}"
        text = out + err
        if before and re.search(r"step \d+/\d+ \(", text):  # it got as far as training
            assert f"resumed from {folder / f'step-{max(before)}'}" in text, f"{what}:\n{text[-3000:]}"
        for p in _step_folders(folder):
            problem = verify_checkpoint(p)
            assert problem is None, f"{what}: {p.name} does not verify: {problem}"
        assert sorted(complete_checkpoints(folder)) == \
            sorted(int(p.name.split("-")[1]) for p in _step_folders(folder))
        for step, losses in _losses(run).items():
            assert losses == {reference[step]}, f"{what}: step {step} logged {losses}, uninterrupted {reference[step]}"
        kinds[kind] = kinds.get(kind, 0) + 1
        if "done:" in text:  # the run finished before the signal: the next trial starts a new one
            finished += 1
            run_no += 1
        print(f"{what}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s, checkpoints "
              f"{[p.name for p in _step_folders(folder)]}")

    # the last run, relaunched without a signal, resumes and ends like the uninterrupted one
    name = f"run{run_no}"
    toml = tmp_path / f"{name}.toml"
    if not toml.exists():
        write_toml(_config(tmp_path / "runs", demo_dir, name), toml)
    last = subprocess.run([sys.executable, "-m", "titan_jepa.train", "--config", str(toml)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, last.stderr[-3000:]
    losses = _losses(tmp_path / "runs" / name)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(v == {reference[s]} for s, v in losses.items())
    print(f"{TRIALS} trials: {kinds}, {finished} run(s) finished between signals")
