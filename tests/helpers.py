"""Shared test helpers: tiny run configs and a multi-process launcher (gloo on CPU)."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from titan_jepa.config import load_config

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tools") not in sys.path:  # demo_data, stats and the tools' scripts, as under python tools/x.py
    sys.path.insert(1, str(ROOT / "tools"))

from demo_data import make_demo_data  # noqa: E402

TOKENIZER = ROOT / "assets" / "tokenizer" / "tokenizer.model"


def demo_data(folder: Path) -> Path:
    """Small deterministic demo data (corpus.jsonl, regex_train.jsonl, regex_test.jsonl)."""
    if not (folder / "corpus.jsonl").exists():
        make_demo_data(folder, seed=0, n_train=400, n_test=40, n_docs=400)
    return folder


def tiny_config(run_dir: Path, data_dir: Path, **sections) -> dict:
    """A config dict for a few-step CPU run of the debug model; ``sections`` override it."""
    cfg = {
        "job": {"name": "t", "dump_folder": str(run_dir), "seed": 0},
        "model": {"flavor": "debug"},
        "tokenizer": {"kind": "tiktoken", "path": str(TOKENIZER)},
        "data": {"kind": "text", "path": str(data_dir / "corpus.jsonl")},
        "training": {"steps": 5, "global_batch_size": 8, "local_batch_size": 4, "seq_len": 64,
                     "device": "cpu"},
        "optimizer": {"lr": 3e-3},
        "lr_scheduler": {"warmup_steps": 2},
        "metrics": {"log_freq": 1, "enable_tensorboard": False, "flop_counter_steps": 0},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


# torch 2.11's DTensor reductions round differently from later versions: TP runs there
# drift from the other layouts by ~1e-7 a step (2e-4 relative after 10 AdamW steps of the
# debug model), where 2.12+ keeps them bit-identical
TP_DRIFTS = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 12)


def free_port() -> int:
    """A free TCP port. Under pytest-xdist each worker draws from its own range, so two
    workers never pick the same port between its check here and its use."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    base = 20000 + 4000 * int(worker[2:])
    while True:
        port = random.randrange(base, base + 4000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _worker(rank: int, world: int, port: int, fn, cfg_dict: dict, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = fn(cfg_dict)
    import torch.distributed as dist

    if dist.is_initialized():
        # tear down together: a rank that leaves while another still talks to the store
        # (hosted by rank 0) can abort the other in gloo's teardown
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    # leave without the interpreter's teardown: gloo's threads, destroyed by C++ static
    # destructors at exit, now and then abort a finished process ("terminate called without an
    # active exception", SIGABRT; seen once in ~500 spawned pairs). Errors raised above still
    # reach torch.multiprocessing as before.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_train(cfg_dict: dict) -> list[float]:
    from titan_jepa.train import train

    return train(load_config(extra=cfg_dict))


def train_each(cases: dict) -> list[list[float]]:
    """``launch`` fn: several runs (``cases["runs"]``) one after the other in the same processes
    (one process group, a mesh each): process start-up, most of a tiny run on 2 cores, once."""
    return [run_train(c) for c in cases["runs"]]


def launch(world: int, cfg_dict: dict, tmp: Path, fn=run_train):
    """Run ``fn(cfg_dict)`` on ``world`` gloo processes; returns rank 0's (JSON) result."""
    out = tmp / f"result_{world}_{os.getpid()}_{free_port()}.json"
    if world == 1:
        os.environ.pop("RANK", None)
        os.environ.pop("WORLD_SIZE", None)
        return fn(cfg_dict)
    mp.start_processes(_worker, args=(world, free_port(), fn, cfg_dict, str(out)), nprocs=world,
                       start_method="spawn")
    return json.loads(out.read_text())


def write_toml(cfg_dict: dict, path: Path) -> Path:
    """Write a config dict ({section: {key: value}}) as a TOML file for CLI runs."""
    lines = []
    for section, values in cfg_dict.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON scalars and lists are TOML
        lines.append("")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
