"""The training loop: learning, outputs in the run folder, and clear failures."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, launch, tiny_config
from titan_jepa.config import load_config
from titan_jepa.train import TrainingError, train


def test_debug_model_loss_goes_down(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"steps": 30},
                      metrics={"log_freq": 10, "enable_tensorboard": True})
    losses = launch(1, cfg, tmp_path)
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.5, (first, last)
    run = tmp_path / "t"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[-1]["loss"] == pytest.approx(losses[-1])
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "memory_gib"} <= set(rows[0])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert load_config(run / "config.toml").training.steps == 30


@pytest.mark.parametrize("sections", [
    {"activation_checkpoint": {"mode": "selective", "selective_every": 2}},
    {"activation_checkpoint": {"mode": "full"}},
    {"compile": {"enable": True}},
], ids=["selective_ac", "full_ac", "compile"])
def test_ac_and_compile_give_same_losses(demo_dir, tmp_path, sections):
    base = launch(1, tiny_config(tmp_path / "a", demo_dir, training={"steps": 3}), tmp_path)
    other = launch(1, tiny_config(tmp_path / "b", demo_dir, training={"steps": 3}, **sections),
                   tmp_path)
    assert other == pytest.approx(base, rel=1e-5)


def test_nan_loss_stops_with_clear_error(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"steps": 20, "max_norm": 0.0},
                      optimizer={"lr": 1e12, "weight_decay": 0.0}, lr_scheduler={"warmup_steps": 0})
    with pytest.raises(TrainingError, match=r"step \d+: loss is (nan|inf); lower optimizer.lr"):
        train(load_config(extra=cfg))


def test_cli_config_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "titan_jepa.train", "--config",
                          str(ROOT / "train_configs/debug_cpu.toml"), "--training.stepz", "3"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: command line: unknown key 'stepz' in [training]; "
                                  "did you mean 'steps'?")


def test_flex_on_cpu_training_is_refused(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, model={"attn_backend": "flex"})
    with pytest.raises(Exception, match=r"trains on CUDA only .* use 'sdpa' on CPU"):
        train(load_config(extra=cfg))


@pytest.mark.parametrize("override,message", [
    ("--data.path=nowhere.jsonl", "error: data.path 'nowhere.jsonl' does not exist; create demo data with"),
    ("--tokenizer.path=nope.model", "error: tokenizer.path 'nope.model' does not exist; train one with"),
    ("--parallelism.tp=3", "error: world size 1 is not divisible by parallelism.dp_replicate * parallelism.tp = 3"),
])
def test_cli_user_errors_are_one_line(tmp_path, override, message):
    out = subprocess.run([sys.executable, "-m", "titan_jepa.train", "--config",
                          str(ROOT / "train_configs/debug_cpu.toml"), override,
                          f"--job.dump_folder={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), out.stderr
