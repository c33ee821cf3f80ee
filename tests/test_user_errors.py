"""User mistakes around the run folder and the weights are one line, exit code 2, no
traceback, before any heavy work (issue 24)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, launch, tiny_config
from titan_jepa.checkpoint.hf import save_hf_checkpoint
from titan_jepa.checkpoint.run_folder import check_run_folder
from titan_jepa.errors import CheckpointError, ConfigError
from titan_jepa.models.llama import build_model, model_args_for


def _cli(*argv, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line(proc) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_dump_folder_that_is_a_file(demo_dir, tmp_path):
    (tmp_path / "out").write_text("x")
    line = _one_line(_cli("-m", "titan_jepa.train", "--config", "train_configs/debug_cpu.toml",
                          "--data.path", str(demo_dir / "corpus.jsonl"), "--job.dump_folder", str(tmp_path / "out")))
    assert "is a file; choose another --job.dump_folder" in line


def test_read_only_and_unwritable_run_folders(tmp_path, monkeypatch):
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test-"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ConfigError, match=r"is not writable \(read-only filesystem\); choose another --job.dump_folder"):
        check_run_folder(tmp_path / "ro")
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"is not writable \(permission denied\)"):
        check_run_folder(tmp_path / "denied")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    args = model_args_for("debug")
    model = build_model(args, device="cpu")
    model.init_weights(seed=1)
    save_hf_checkpoint(model.state_dict(), args, folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_broken_model_safetensors(demo_dir, tmp_path, hf_folder, damage):
    bad = tmp_path / "hf"
    shutil.copytree(hf_folder, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not safetensors" * 100)
    line = _one_line(_cli("tools/convert_hf.py", "--from-hf", "--src", str(bad), "--dst", str(tmp_path / "x.pt")))
    assert "model.safetensors" in line and ("is truncated" in line or "not a complete safetensors file" in line)
    cfg = tiny_config(tmp_path / "run", demo_dir, model={"flavor": ""},
                      checkpoint={"initial_load_path": str(bad), "initial_load_format": "hf"})
    with pytest.raises(CheckpointError, match=r"checkpoint.initial_load_path: .*model.safetensors.* (is truncated|not a "
                                              r"complete safetensors file)"):
        launch(1, cfg, tmp_path)
    assert not (tmp_path / "run" / "t" / "metrics.jsonl").exists()  # nothing trained


def test_ctrl_c_before_the_loop_is_one_line():
    """Ctrl-C while the run starts (imports, data, model): one line, exit code 130."""
    code = ("import signal, os, titan_jepa.errors as e\n"
            "def body():\n    os.kill(os.getpid(), signal.SIGINT)\n    import time; time.sleep(5)\n"
            "e.run_main(body)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "interrupted (Ctrl-C): stopped; a relaunch resumes from the last complete checkpoint"


def test_torch_is_never_asked_for_an_invalid_lr(demo_dir, tmp_path):
    line = _one_line(_cli("-m", "titan_jepa.train", "--config", "train_configs/debug_cpu.toml",
                          "--optimizer.lr", "-0.001"))
    assert line == "error: optimizer.lr = -0.001 must be positive (e.g. 3e-4)"
