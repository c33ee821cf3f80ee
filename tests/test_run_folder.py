"""A run folder belongs to one run (checkpoint/run_folder.py), and a resume refuses what it
cannot honour (checkpoint/contract.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TOKENIZER, launch, tiny_config, write_toml
from titan_jepa.checkpoint.contract import ResumeMismatch
from titan_jepa.checkpoint.files import verify_checkpoint
from titan_jepa.checkpoint.run_folder import RunFolderLock, open_run_folder
from titan_jepa.checkpoint.weights import complete_checkpoints
from titan_jepa.errors import ConfigError, RunFolderInUse


def _contend(folder: str, start, delay: float, results, hold: float) -> None:
    start.wait()
    time.sleep(delay)
    try:
        lock = open_run_folder(Path(folder))
    except RunFolderInUse as e:
        results.put(("refused", str(e)))
        return
    results.put(("holds", os.getpid()))
    time.sleep(hold)
    lock.release()


@pytest.mark.parametrize("mode", ["simultaneous", "staggered"])
def test_one_holder_in_every_race(tmp_path, mode):
    """20 races of 3 processes each (forked, so each start costs little): exactly one holds the
    folder, the others are refused with one line naming it."""
    ctx = mp.get_context("fork")
    for trial in range(10):
        folder = tmp_path / f"{mode}{trial}"
        start, results = ctx.Event(), ctx.Queue()
        delays = [0.0, 0.0, 0.0] if mode == "simultaneous" else [0.0, 0.05 * (1 + trial % 3), 0.2]
        procs = [ctx.Process(target=_contend, args=(str(folder), start, d, results, 0.4)) for d in delays]
        for p in procs:
            p.start()
        start.set()
        got = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        holders = [g for g in got if g[0] == "holds"]
        assert len(holders) == 1, got
        for kind, msg in got:
            if kind == "refused":
                assert f"in use by pid {holders[0][1]} on {socket.gethostname()}" in msg and "\n" not in msg
                assert "--job.name" in msg


def test_dead_and_other_host_locks(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": "x", "heartbeat": time.time()}
    (folder / ".lock").write_text(json.dumps(record))
    lock = open_run_folder(folder)  # this host, the pid is gone: taken over with a warning
    assert "pid" in caplog.text and "is gone" in caplog.text
    lock.release()
    assert json.loads((folder / ".lock").read_text())["free"] is True
    # another host that still beats may hold a lock this machine cannot see: refused
    (folder / ".lock").write_text(json.dumps({**record, "host": "elsewhere", "heartbeat": time.time()}))
    with pytest.raises(RunFolderInUse, match="in use by pid .* on elsewhere .* heartbeat is 0 s old"):
        open_run_folder(folder)
    # ... and taken over once its heartbeat is older than STALE_S
    (folder / ".lock").write_text(json.dumps({**record, "host": "elsewhere", "heartbeat": time.time() - 600}))
    RunFolderLock(folder).acquire()


def test_folder_errors_are_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match=r"afile is a file; choose another --job.dump_folder"):
        open_run_folder(tmp_path / "afile" / "run")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere: the read-only mount case below covers it
            with pytest.raises(ConfigError, match="is not writable"):
                open_run_folder(ro / "run")
    finally:
        ro.chmod(0o700)


def _cli_run(folder: Path, demo_dir: Path, steps: int, name: str = "t", world: int = 1, **extra) -> subprocess.Popen:
    cfg = tiny_config(folder, demo_dir, job={"name": name, "dump_folder": str(folder), "seed": 0},
                      training={"steps": steps, "local_batch_size": 2, "global_batch_size": 4},
                      checkpoint={"enable": True, "interval": 10, "keep_latest_k": 0}, **extra)
    toml = write_toml(cfg, folder.parent / f"{folder.name}_{name}_{world}.toml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = ([sys.executable, "-m", "titan_jepa.launch", "--standalone", f"--nproc_per_node={world}"]
                if world > 1 else [sys.executable])
    return subprocess.Popen([*launcher, "-m", "titan_jepa.train", "--config", str(toml)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


STEPS = 50


@pytest.mark.parametrize("world,mode", [(1, "staggered"), (2, "simultaneous")])
def test_a_second_launch_leaves_the_first_untouched(demo_dir, tmp_path, world, mode):
    alone = _cli_run(tmp_path / "alone", demo_dir, STEPS, world=world)
    alone.communicate(timeout=300)
    first = _cli_run(tmp_path / "shared", demo_dir, STEPS, world=world)
    if mode == "staggered":  # once the first run trains, paused (alive, holding the folder) meanwhile:
        metrics = tmp_path / "shared" / "t" / "metrics.jsonl"  # a loaded machine may start the second
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and first.poll() is None:
            time.sleep(0.2)  # slower than the first trains to its end
        assert first.poll() is None, "the first run ended before it could be paused"
        os.kill(first.pid, signal.SIGSTOP)
    t0 = time.time()
    second = _cli_run(tmp_path / "shared", demo_dir, STEPS, world=world)
    try:
        out2, err2 = second.communicate(timeout=300)
    finally:
        if mode == "staggered":
            os.kill(first.pid, signal.SIGCONT)
    waited = time.time() - t0
    out1, err1 = first.communicate(timeout=300)
    if mode == "simultaneous" and first.returncode == 2:  # either may win the race
        (out1, err1), (out2, err2) = (out2, err2), (out1, err1)
        assert second.returncode == 0
    else:
        assert first.returncode == 0, err1[-2000:]
    lines = [x for x in err2.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "is in use by pid" in lines[0], err2[-2000:]  # once, by rank 0
    assert "Traceback" not in err2 and waited < 60
    run = tmp_path / "shared" / "t"
    assert _losses(run) == _losses(tmp_path / "alone" / "t")  # the first run as if alone
    found = complete_checkpoints(run / "checkpoint")
    assert sorted(found) == list(range(10, STEPS + 1, 10)) and all(verify_checkpoint(p) is None for p in found.values())


def _tiny(tmp_path, demo_dir, **sections):
    sections["training"] = {"steps": 4, "local_batch_size": 2, "global_batch_size": 4, **sections.get("training", {})}
    return tiny_config(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 2}, **sections)


def test_resume_refuses_another_seq_len_and_tokenizer(demo_dir, tmp_path):
    cfg = _tiny(tmp_path, demo_dir, training={"steps": 2, "local_batch_size": 2, "global_batch_size": 4})
    launch(1, cfg, tmp_path)
    longer = dict(cfg, training={**cfg["training"], "steps": 4, "seq_len": 128})
    with pytest.raises(ResumeMismatch, match=r"cannot resume this run: training.seq_len: 64 -> 128; resume with the "
                                             r"saved setting, or give the run a new --job.name, or start fresh"):
        launch(1, longer, tmp_path)
    # another tokenizer with the same vocabulary size: two ranks swapped, ids mean other tokens
    lines = TOKENIZER.read_text().splitlines()
    (a, ra), (b, rb) = lines[300].split(), lines[301].split()
    lines[300], lines[301] = f"{a} {rb}", f"{b} {ra}"
    other = tmp_path / "other.model"
    other.write_text("\n".join(sorted(lines, key=lambda x: int(x.split()[1]))) + "\n")
    swapped = dict(cfg, training={**cfg["training"], "steps": 4}, tokenizer={"kind": "tiktoken", "path": str(other)})
    with pytest.raises(ResumeMismatch, match=r"tokenizer: sha256: '.*' -> '.*'"):
        launch(1, swapped, tmp_path)


def test_a_changed_lr_takes_effect_and_each_segment_keeps_its_config(demo_dir, tmp_path):
    from titan_jepa.config import load_config
    from titan_jepa.optim import lr_factor

    cfg = _tiny(tmp_path, demo_dir, optimizer={"lr": 3e-3}, lr_scheduler={"warmup_steps": 0, "decay_type": "constant"})
    launch(1, dict(cfg, training={**cfg["training"], "steps": 2}), tmp_path)
    resumed = dict(cfg, optimizer={"lr": 1e-5})
    launch(1, resumed, tmp_path)
    run = tmp_path / "t"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"lr"' in x]
    new = load_config(extra=resumed)
    assert [r["lr"] for r in rows if r["step"] > 2] == [1e-5 * lr_factor(s - 1, new) for s in (3, 4)]
    assert [r["lr"] for r in rows if r["step"] <= 2] == [3e-3, 3e-3]
    assert 'lr = 0.003' in (run / "config.until-step-2.toml").read_text()
    assert 'lr = 1e-05' in (run / "config.toml").read_text()


def test_moved_tokenizer_file_resumes(demo_dir, tmp_path):
    """The tokenizer's identity is its content, not its path."""
    cfg = _tiny(tmp_path, demo_dir)
    launch(1, dict(cfg, training={**cfg["training"], "steps": 2}), tmp_path)
    moved = tmp_path / "elsewhere.model"
    shutil.copy(TOKENIZER, moved)
    assert len(launch(1, dict(cfg, tokenizer={"kind": "tiktoken", "path": str(moved)}), tmp_path)) == 2
