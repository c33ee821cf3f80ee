"""Fault tolerance: a worker SIGKILLed under ``torchrun --max-restarts`` restarts the job, which
resumes from the last checkpoint and ends with the loss of an uninterrupted run; SIGTERM
(preemption) saves a checkpoint of the current step and exits cleanly, on one process and
through a torchrun agent; parallelism.comm_timeout_s reaches the process group."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, launch, tiny_config, write_toml
from titan_jepa.checkpoint import complete_checkpoints

STEPS = 8
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
              "TORCHELASTIC_RESTART_COUNT"):
        env.pop(k, None)
    return env


def _config(run_dir, demo, steps=STEPS, **checkpoint):
    return tiny_config(run_dir, demo, training={"steps": steps},
                       checkpoint={"enable": True, "interval": 2, "keep_latest_k": 0, **checkpoint})


@pytest.fixture
def one_thread():
    """In-process runs on one thread: on a busy 2-core machine, two OpenMP threads can make
    a tiny CPU step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "t" / "metrics.jsonl").read_text().splitlines()]


KILL_ENTRY = str(ROOT / "tests" / "kill_entry.py")  # titan_jepa.train with a fault-injection hook


def _torchrun(extra_args=(), entry=("-m", "titan_jepa.train")):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *extra_args, *entry]


def test_sigkilled_rank_restarts_and_resumes_to_the_same_loss(demo_dir, tmp_path):
    run_dir = tmp_path / "killed"
    cfg = _config(run_dir, demo_dir)
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    proc = subprocess.run(_torchrun(["--max-restarts=1"], [KILL_ENTRY, "--kill-at-step", "5"])
                          + ["--config", str(toml)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    log = proc.stdout
    assert proc.returncode == 0, log[-4000:]
    assert "rank 1 sends itself SIGKILL at step 5" in log  # the first attempt was killed
    assert "resumed from" in log and "step-4" in log, log[-4000:]  # the restart resumed
    assert log.count("rank 1 sends itself") == 1  # and did not kill itself again
    rows = _rows(run_dir)
    assert [r["step"] for r in rows][-4:] == [5, 6, 7, 8]  # steps 5..8 ran after the restart

    # the same job without a failure (and without checkpoints)
    plain = tiny_config(tmp_path / "plain", demo_dir, training={"steps": STEPS})
    uninterrupted = launch(2, plain, tmp_path)
    assert rows[-1]["loss"] == uninterrupted[-1]
    assert [r["loss"] for r in rows[-4:]] == uninterrupted[4:]


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(demo_dir, tmp_path, one_thread):
    # one process: SIGTERM at the start of step 3 (the test hook signals the process itself)
    cfg = _config(tmp_path, demo_dir, interval=100)
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    proc = subprocess.run([sys.executable, KILL_ENTRY, "--kill-at-step", "3", "--kill-signal", "SIGTERM",
                           "--config", str(toml)], cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "SIGTERM received" in proc.stdout
    assert "preempted (SIGTERM): stopped after step 3" in proc.stdout, proc.stdout[-4000:]
    assert "done:" not in proc.stdout
    folder = tmp_path / "t" / "checkpoint"
    assert list(complete_checkpoints(folder)) == [3]  # off the interval: the preemption save
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]

    # the relaunch resumes after step 3 and ends where an uninterrupted run ends
    resumed = launch(1, cfg, tmp_path)
    uninterrupted = launch(1, tiny_config(tmp_path / "plain", demo_dir, training={"steps": STEPS}), tmp_path)
    assert resumed == uninterrupted[3:]
    assert list(complete_checkpoints(folder)) == [3, STEPS]


def test_sigterm_to_torchrun_agent_saves_on_every_rank(demo_dir, tmp_path):
    cfg = _config(tmp_path, demo_dir, steps=200, interval=1000)
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    proc = subprocess.Popen(_torchrun(["--max-restarts=0"]) + ["--config", str(toml)], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        for line in proc.stdout:  # once training runs, terminate the agent (not the workers)
            out.append(line)
            if re.search(r"\bstep +2/", line):  # the console line of step 2: "step 2/200 (1%) ..."
                proc.send_signal(signal.SIGTERM)
                break
        out.extend(proc.stdout)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(out)
    saved = list(complete_checkpoints(tmp_path / "t" / "checkpoint"))
    assert len(saved) == 1 and 2 <= saved[0] < 200, log[-4000:]
    step = saved[0]
    assert f"preempted (SIGTERM): stopped after step {step}" in log, log[-4000:]
    files = sorted(os.listdir(tmp_path / "t" / "checkpoint" / f"step-{step}"))
    assert "__0_0.distcp" in files and "__1_0.distcp" in files  # both ranks wrote their shards
    assert "rng" in files and sorted(os.listdir(tmp_path / "t" / "checkpoint" / f"step-{step}" / "rng")) == [
        "rank_0.pt", "rank_1.pt"]
    # the workers exited cleanly; the agent re-raises the signal it got (non-zero)
    assert "exitcode  : -9" not in log and "SIGKILL" not in log


def _timeout_of_default_group(cfg_dict):
    import torch
    import torch.distributed as dist

    from titan_jepa.config import load_config
    from titan_jepa.parallel.mesh import init_distributed

    init_distributed(load_config(extra=cfg_dict))
    backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
    return backend.options._timeout.total_seconds()


def test_comm_timeout_reaches_the_process_group(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, parallelism={"comm_timeout_s": 1234})
    assert launch(2, cfg, tmp_path, fn=_timeout_of_default_group) == 1234
