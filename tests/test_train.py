"""The training loop: learning, outputs in the run folder, and clear failures."""

import json
import math
import re
import subprocess
import sys

import pytest

from helpers import ROOT, launch, tiny_config
from titan_jepa.config import ConfigError, load_config
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


def test_one_rank_bfloat16_computes_under_autocast_with_float32_parameters(demo_dir, tmp_path, caplog):
    """mixed_precision_param = "bfloat16" on one process (no FSDP to apply it) used to be
    ignored; now the forward and the loss run under torch.autocast(bfloat16), the rest fp32."""
    import logging
    from types import SimpleNamespace

    import torch

    from titan_jepa.parallel.mesh import ParallelDims
    from titan_jepa.parallel.parallelize import autocast_dtype
    from titan_jepa.parallel.schedule import LocalRunner

    lin = torch.nn.Linear(4, 4)
    mb = SimpleNamespace(tokens=torch.randn(2, 4), mask_inputs=dict, targets_at=None, tokens_at=None)
    seen = []

    def loss_fn(out, _):
        seen.append(out.dtype)
        return out.float().sum(), None

    LocalRunner(lin, autocast=torch.bfloat16).run([mb], loss_fn)
    LocalRunner(lin).run([mb], loss_fn)
    assert seen == [torch.bfloat16, torch.float32]
    assert lin.weight.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32

    cfg = load_config(extra=tiny_config(tmp_path, demo_dir, training={"mixed_precision_param": "bfloat16"}))
    assert autocast_dtype(ParallelDims(1, 1, 1, 1), cfg) == torch.bfloat16
    assert autocast_dtype(ParallelDims(1, 2, 1, 2), cfg) is None  # FSDP casts the parameters itself
    with caplog.at_level(logging.WARNING, logger="titan_jepa"):
        assert autocast_dtype(ParallelDims(1, 1, 2, 2), cfg) is None
    assert "no FSDP" in caplog.text and "dp_shard >= 2" in caplog.text

    fp32 = launch(1, tiny_config(tmp_path / "a", demo_dir, training={"steps": 4}), tmp_path)
    bf16 = [launch(1, tiny_config(tmp_path / d, demo_dir, training={"steps": 4, "mixed_precision_param": "bfloat16"}),
                   tmp_path) for d in ("b", "c")]
    assert bf16[0] == bf16[1]  # deterministic
    diffs = [abs(a - b) for a, b in zip(fp32, bf16[0])]
    assert 1e-5 < diffs[0] < 2e-2, diffs  # the first forward already computes in bfloat16
    assert max(diffs) < 5e-2, diffs


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


def test_compile_under_tp_on_cpu_is_one_line():
    """torch.compile with tensor parallelism fails inside torch's DTensor backward on the CPU
    (torch 2.13 without a FLOP-counted first step, 2.14 always): refused at load with the fix."""
    with pytest.raises(ConfigError, match=r"compile.enable with parallelism.tp > 1 is not supported on the CPU"):
        load_config(extra={"compile": {"enable": True}, "parallelism": {"tp": 2}, "training": {"device": "cpu"}})
    load_config(extra={"compile": {"enable": True}, "parallelism": {"tp": 2}, "training": {"device": "cuda"}})


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


class HostReads:
    """Counts the host reads of tensors (.item/.tolist/.cpu, bool/float/int conversion) that
    titan_jepa's own code makes outside its CPU data pipeline (titan_jepa/data/), while on.
    Each is a host sync when the tensor is on a GPU."""

    NAMES = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")
    # functions that run on the CPU path alone (no device to sync with): the per-segment
    # attention's mask (models/attention.py; CUDA keeps the dense mask or FlexAttention)
    CPU_ONLY = ("blocked_mask",)

    def __init__(self):
        import torch

        self.on, self.calls, self.saved = False, [], {}
        self.torch = torch

    def __enter__(self):
        import os
        import sys

        pkg = os.path.dirname(os.path.abspath(train.__code__.co_filename))
        data = os.path.join(pkg, "data")

        def wrap(name, original):
            def counted(t, *args, **kwargs):
                if self.on:
                    where = sys._getframe(1).f_code.co_filename
                    cpu_only = sys._getframe(1).f_code.co_name in self.CPU_ONLY
                    if where.startswith(pkg) and not where.startswith(data) and not cpu_only:
                        self.calls.append(f"{name} in {os.path.relpath(where, pkg)}:{sys._getframe(1).f_lineno}")
                return original(t, *args, **kwargs)
            return counted

        for name in self.NAMES:
            self.saved[name] = self.torch.Tensor.__dict__.get(name)  # None: inherited
            setattr(self.torch.Tensor, name, wrap(name, getattr(self.torch.Tensor, name)))
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            if original is None:
                delattr(self.torch.Tensor, name)
            else:
                setattr(self.torch.Tensor, name, original)


@pytest.mark.parametrize("sections", [
    {"stp": {"enable": True, "linear_predictor": True}},
    {"data": {"kind": "chat"}, "training": {"seq_len": 256}, "jepa": {"enable": True}},
], ids=["stp", "jepa"])
def test_no_host_reads_between_sync_steps(demo_dir, tmp_path, sections):
    """Steps 1-3 and 5-7 of 8 (log_freq 4, a checkpoint at 4 and 8) read nothing from tensors;
    the sync steps 4 and 8 do (so the counter can see them) and still log step 4."""
    from titan_jepa.train import TrainHooks

    if sections.get("data", {}).get("kind") == "chat":
        sections["data"]["path"] = str(demo_dir / "regex_train.jsonl")
    training = {"steps": 8, **sections.pop("training", {})}
    cfg = tiny_config(tmp_path, demo_dir, training=training, metrics={"log_freq": 4},
                      checkpoint={"enable": True, "interval": 4}, **sections)
    reads = HostReads()

    def on_step_start(step):  # a step runs from its start to the next step's start
        reads.on = step % 4 != 0

    with reads:
        losses = train(load_config(extra=cfg), hooks=TrainHooks(on_step_start=on_step_start))
        reads.on = False
    assert reads.calls == [], reads.calls
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8] and rows[0]["loss"] == pytest.approx(losses[3])
    # the same counter does see the sync step's reads
    reads.calls.clear()
    with reads:
        reads.on = True
        train(load_config(extra=dict(cfg, training=dict(cfg["training"], steps=1),
                                     job=dict(cfg["job"], dump_folder=str(tmp_path / "one")))))
        reads.on = False
    assert any(c.startswith("tolist") for c in reads.calls), reads.calls


def test_nan_found_at_a_later_sync_step_names_its_first_step(demo_dir, tmp_path):
    """The NaN check runs at sync steps only: with log_freq 5 it is reported at the next
    multiple of 5, naming the step where it first appeared (the step log_freq 1 stops at)."""
    cfg = tiny_config(tmp_path, demo_dir, training={"steps": 20, "max_norm": 0.0},
                      optimizer={"lr": 1e12, "weight_decay": 0.0}, lr_scheduler={"warmup_steps": 0})
    with pytest.raises(TrainingError) as every_step:
        train(load_config(extra=cfg))
    first = int(re.match(r"step (\d+): loss is", str(every_step.value)).group(1))
    assert f"first appeared at step {first};" in str(every_step.value)
    cfg["metrics"]["log_freq"] = 5
    detected = (first + 4) // 5 * 5
    with pytest.raises(TrainingError, match=rf"^step {detected}: loss is (nan|inf); lower optimizer.lr, "
                                            rf".*first appeared at step {first};"):
        train(load_config(extra=cfg))
