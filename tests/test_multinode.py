"""Two torchrun launchers on one machine act as two nodes (c10d rendezvous on 127.0.0.1)
and train together with HSDP: replicate across the "nodes", shard within. Their losses
equal one process's at the same global batch."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, free_port, launch, tiny_config, write_toml

STEPS = 3


def _read_losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "t" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted(rows, key=lambda r: r["step"])]


def test_two_launchers_hsdp_equal_one_process(demo_dir, tmp_path):
    # global batch 8 = 2 slots of 4 rows: one per node here, two micro-batches in one process
    run_dir = tmp_path / "two_nodes"
    cfg = tiny_config(run_dir, demo_dir, training={"steps": STEPS})
    config = write_toml(cfg, tmp_path / "cfg.toml")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    procs = []
    for node_rank in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=mn{port}",
               f"--node_rank={node_rank}", "--max_restarts=0",
               "-m", "titan_jepa.train", "--config", str(config),
               "--parallelism.dp_replicate", "2", "--parallelism.dp_shard", "1"]
        log = open(tmp_path / f"node{node_rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [p.wait(timeout=240) for p, _ in procs]
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    full_logs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    tails = "\n".join(log[-3000:] for log in full_logs)
    assert codes == [0, 0], tails
    # HSDP: replicate across the two launchers. Search the whole log: the tail may be all
    # rendezvous shutdown chatter from the agent that outlives the store's host.
    assert any("dp_replicate 2 x dp_shard 1" in log for log in full_logs), tails
    two_nodes = _read_losses(run_dir)
    assert len(two_nodes) == STEPS

    single_dir = tmp_path / "single"
    single = launch(1, tiny_config(single_dir, demo_dir, training={"steps": STEPS}), tmp_path)
    assert two_nodes == pytest.approx(single, rel=1e-4)
    assert _read_losses(single_dir) == pytest.approx(single, rel=1e-12)
