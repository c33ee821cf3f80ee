"""Metrics sinks: wandb (offline run files read back), the progress line (tokens seen, ETA)."""

import json
import logging
import struct
import zlib

import pytest

from helpers import launch, tiny_config
from titan_jepa.config import ConfigError, load_config
from titan_jepa.metrics import MetricsLogger, format_count, format_duration

wandb = pytest.importorskip("wandb", reason="the wandb extra: pip install 'titan-jepa[wandb]'")

BLOCK = 32768
HEADER = 7  # ":W&B", magic 0xBEE1, version


def read_wandb_records(path):
    """The protobuf Records of a .wandb file (a LevelDB-style log: 32 KiB blocks of chunks
    with a 7-byte header crc32 / length / type, type 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending, records = HEADER, b"", []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left  # zero padding
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            pending = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            pending += chunk
        else:
            raise AssertionError(f"{path}: unknown chunk type {kind}")
        rec = pb.Record()
        rec.ParseFromString(pending)
        records.append(rec)
        pending = b""
    assert zlib.crc32(b"") == 0  # (the crc is not checked; the protobuf parse is)
    return records


def offline_run(run_folder):
    """(run record, config dict, {step: {key: value}}) of the one offline run in run_folder."""
    files = list((run_folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    run, config, history = None, {}, {}
    for rec in read_wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            step = rec.history.step.num if rec.history.HasField("step") else items.get("_step")
            history.setdefault(int(step), {}).update(items)
    return run, config, history


def test_wandb_offline_logs_config_and_every_step(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "runs"
    cfg = tiny_config(run_dir, demo_dir, training={"steps": 3},
                      metrics={"enable_wandb": True, "wandb_project": "tj-test",
                               "wandb_run_name": "offline-check", "wandb_tags": ["ci", "tiny"]},
                      validation={"enable": True, "path": str(demo_dir / "corpus.jsonl"), "freq": 2, "steps": 1})
    losses = launch(1, cfg, tmp_path)
    run, config, history = offline_run(run_dir / "t")
    assert run.display_name == "offline-check" and list(run.tags) == ["ci", "tiny"]
    assert run.project == "tj-test"
    assert config["training"]["steps"] == 3 and config["metrics"]["wandb_tags"] == ["ci", "tiny"]
    rows = [json.loads(x) for x in (run_dir / "t" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(history) == [1, 2, 3]
    val = [r for r in rows if "val/loss" in r]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in val] == [2, 3]  # every freq steps and the last
    for r in val:
        assert history[r["step"]]["val/loss"] == pytest.approx(r["val/loss"], rel=1e-12)
    for row, loss in zip(rows, losses):
        logged = history[row["step"]]
        assert logged["loss"] == pytest.approx(loss, rel=1e-12)
        assert logged["lr"] == pytest.approx(row["lr"], rel=1e-12)
        assert logged["tokens_seen"] == row["tokens_seen"] == row["step"] * 8 * 64


def test_wandb_without_the_package_is_one_clear_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    with pytest.raises(ConfigError, match=r"pip install 'titan-jepa\[wandb\]'"):
        load_config(extra={"metrics": {"enable_wandb": True}})


def test_progress_line_has_steps_tokens_and_eta(tmp_path, caplog, monkeypatch):
    import torch

    clock = iter([0.0, 10.0, 50.0])
    monkeypatch.setattr("titan_jepa.metrics.time.perf_counter", lambda: next(clock))
    m = MetricsLogger(tmp_path, 0, tensorboard=False, jsonl=True, flops_per_token=1.0,
                      device=torch.device("cpu"), total_steps=100, tokens_per_step=512)
    with caplog.at_level(logging.INFO, logger="titan_jepa"):
        first = m.log(10, {"loss": 1.0})  # t = 10 (the first log: no rate yet)
        second = m.log(20, {"loss": 0.9})  # t = 50: 10 steps in 40 s, 80 steps left
    m.close()
    assert "eta_s" not in first and first["tokens_seen"] == 10 * 512
    assert second["eta_s"] == pytest.approx(80 * 4.0)
    assert (first["interval_s"], second["interval_s"]) == (10.0, 40.0)  # their sum: the training's wall time
    line = caplog.records[-1].getMessage()
    assert line.startswith("step  20/100 (20%)") and "seen 10.2K tok" in line and "eta 5m20s" in line
    assert [format_duration(s) for s in (5, 65, 3 * 3600 + 420, 2 * 86400 + 3600 * 4)] == \
        ["5s", "1m05s", "3h07m", "2d04h"]
    assert [format_count(n) for n in (950, 12_300, 4_560_000, 7.89e9)] == ["950", "12.3K", "4.56M", "7.89B"]


def test_tokens_per_s_and_mfu_are_per_device_under_model_parallelism(tmp_path, monkeypatch):
    """tp x pp ranks share one batch slot's work: each counts the slot's tokens, so the rate
    per device (and the MFU from it) is divided by tp x pp, as torchtitan does."""
    import torch

    rows = {}
    for mp_size in (1, 4):
        monkeypatch.setattr("titan_jepa.metrics.time.perf_counter", lambda: 0.0)
        m = MetricsLogger(tmp_path / str(mp_size), 1, tensorboard=False, jsonl=False, flops_per_token=6e6,
                          device=torch.device("cpu"), peak_flops=1e12, model_parallel_size=mp_size)
        m.count_tokens(1000)
        m.count_tokens(1000)
        monkeypatch.setattr("titan_jepa.metrics.time.perf_counter", lambda: 2.0)  # 2000 tokens in 2 s
        rows[mp_size] = m.log(1, {"loss": 1.0})
        m.close()
    assert rows[1]["tokens_per_s"] == pytest.approx(1000.0) and rows[1]["mfu"] == pytest.approx(0.6)
    assert rows[4]["tokens_per_s"] == pytest.approx(250.0) and rows[4]["mfu"] == pytest.approx(0.15)
