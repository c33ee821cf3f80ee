"""Operations: the Docker image and SLURM script match the package, the dry-run memory
planner (8B at 8 and 64 ranks; its bytes equal a real 2-rank run's), float8 refused off
CUDA, profiler traces of chosen steps, and metric plots."""

import fnmatch
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, launch, run_train, tiny_config

PLAN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- Docker and SLURM -------------------------------------------------------------------

def _dockerfile_instructions():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continued lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in patterns)


def test_dockerfile_install_steps_and_entrypoint_match_the_package():
    ins = _dockerfile_instructions()
    ignore = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
              if p.strip() and not p.startswith("#")]
    copies = [shlex.split(rest) for word, rest in ins if word == "COPY"]
    assert copies
    dests = {}
    for args in copies:
        *srcs, dest = [a for a in args if not a.startswith("--")]
        for src in srcs:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
            assert not _ignored(src, ignore), f".dockerignore drops {src}, which the Dockerfile copies"
            dests[src] = dest
    # what the package needs to install and run is copied
    for needed in ("pyproject.toml", "titan_jepa", "train_configs", "assets", "docker/entrypoint.sh"):
        assert needed in dests, f"the Dockerfile does not copy {needed}"
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install --no-deps ." in runs
    for module in re.findall(r"import ([\w., ]+)\"", runs)[0].split(","):
        importlib.import_module(module.strip())
    # the entrypoint is the copied script, and the module it launches imports
    (entry,) = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry[0] == dests["docker/entrypoint.sh"]
    script = ROOT / "docker" / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = {**os.environ, "DRY_RUN": "1", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "8",
           "RDZV_ENDPOINT": "head:29500", "RDZV_ID": "job7"}
    cmd = subprocess.run([str(script), "--training.steps", "3"], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert cmd[:3] == ["python", "-m", "titan_jepa.launch"]  # torchrun with one-line user errors
    for flag in ("--nnodes=2", "--nproc_per_node=8", "--node_rank=1", "--rdzv_backend=c10d",
                 "--rdzv_endpoint=head:29500", "--rdzv_id=job7"):
        assert flag in cmd
    module = cmd[len(cmd) - 1 - cmd[::-1].index("-m") + 1]  # the module the launcher starts
    assert module == "titan_jepa.train"
    assert callable(importlib.import_module(module).main)
    assert (ROOT / cmd[cmd.index("--config") + 1]).is_file()  # the default config ships
    assert cmd[-2:] == ["--training.steps", "3"]
    single = subprocess.run([str(script)], env={**os.environ, "DRY_RUN": "1", "NPROC_PER_NODE": "1"},
                            capture_output=True, text=True, check=True).stdout
    assert "--standalone" in single
    bad = subprocess.run([str(script)], env={**os.environ, "DRY_RUN": "1", "NNODES": "2"},
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "RDZV_ENDPOINT" in bad.stderr


def test_slurm_script_launches_the_package():
    script = ROOT / "tools" / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for part in ("srun", "-m titan_jepa.launch", "--rdzv_backend=c10d", "--rdzv_endpoint=", "-m titan_jepa.train"):
        assert part in text
    default = re.search(r"CONFIG_FILE=\$\{1:-([^}]+)\}", text).group(1)
    assert (ROOT / default).is_file()


# ---- the dry-run planner --------------------------------------------------------------

def _plan_cli(*args):
    out = subprocess.run([sys.executable, "-m", "titan_jepa.plan", *args], cwd=ROOT, env=PLAN_ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


PLAN_CASES = """
import json, sys
from titan_jepa.config import ConfigError, load_config, parse_cli_overrides
from titan_jepa.plan import plan
out = []
for path, world, rank, argv in json.loads(sys.argv[1]):
    cfg = load_config(path, parse_cli_overrides(argv)[1])
    try:
        out.append(vars(plan(cfg, world, rank)))
    except ConfigError as e:
        out.append({"error": str(e)})
print(json.dumps(out))
"""


def _plan_cases(cases):
    out = subprocess.run([sys.executable, "-c", PLAN_CASES, json.dumps(cases)], cwd=ROOT,
                         env=PLAN_ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_plan_8b_at_64_and_8_ranks(tmp_path):
    n = 8_030_261_248  # Llama-3.1-8B
    report = _plan_cli("--config", "train_configs/llama3_8b_multinode.toml", "--world-size", "64",
                       "--gpu", "H200", "--json", str(tmp_path / "p64.json"))
    p64 = json.loads((tmp_path / "p64.json").read_text())
    assert "dp_replicate 8 x dp_shard 8 x tp 1" in report and "FITS" in report
    assert (p64["dp_replicate"], p64["dp_shard"]) == (8, 8)
    assert p64["num_params"] == n
    # fp32 shards over the 8 ranks of a node; gradients alike; AdamW 2 x fp32
    assert p64["param_bytes"] == pytest.approx(n * 4 / 8, rel=1e-3)
    assert p64["grad_bytes"] == p64["param_bytes"]
    assert p64["optimizer_bytes"] == pytest.approx(2 * p64["param_bytes"], rel=1e-3)
    assert 10 * 2**30 < p64["activation_bytes"] < p64["usable_bytes"]
    assert p64["fits"] and p64["total_bytes"] < p64["usable_bytes"]

    h200, multi = "train_configs/llama3_8b_h200.toml", "train_configs/llama3_8b_multinode.toml"
    p8, rep, tp, bad = _plan_cases([
        [h200, 8, 0, []],  # one node of 8: FSDP over 8
        [multi, 8, 0, []],  # the multinode layout on 8 ranks: 8 replicas x 1 shard
        [h200, 8, 0, ["--parallelism.tp", "2", "--parallelism.dp_shard", "4",
                      "--activation_checkpoint.mode", "full"]],
        [multi, 12, 0, []],  # 12 ranks do not fit dp_replicate 8
    ])
    # the same shards as HSDP 8x8, which fit an H200 but not an H100
    assert p8["param_bytes"] == p64["param_bytes"] and p8["total_bytes"] == p64["total_bytes"]
    assert p8["fits"] and p8["total_bytes"] > 0.9 * 81559 * 2**20
    # whole fp32 copies on every rank do not fit
    assert rep["param_bytes"] == n * 4 and not rep["fits"]
    # tp=2 x dp_shard=4 is 8 shards too; full checkpointing and SP shrink the activations
    assert tp["param_bytes"] == pytest.approx(p8["param_bytes"], rel=1e-3)
    assert tp["activation_bytes"] < p8["activation_bytes"]
    # loss parallel: the logits are vocab-sharded, half the vocabulary on each tp rank
    assert 2 * tp["logits_bytes"] == p8["logits_bytes"] == 2 * 8192 * 128256 * (2 + 8)
    assert "world size 12 is not divisible" in bad["error"]


def test_plan_counts_context_parallelism():
    """cp divides the activations and the head (a rank holds S / cp tokens of each row) and
    adds one layer's gathered K/V with their gradients (expanded to every head for CUDA's masked
    kernel) and the dense mask on global indices; the 128k config fits an H200 within 80 %."""
    cfg128 = "train_configs/llama3_8b_128k_h200.toml"
    cp8, one16k, cp4 = _plan_cases([
        [cfg128, 8, 0, []],
        [cfg128, 8, 0, ["--parallelism.cp", "1", "--parallelism.dp_shard", "8", "--training.seq_len", "16384"]],
        [cfg128, 8, 0, ["--parallelism.cp", "4", "--parallelism.dp_shard", "2"]],
    ])
    seq, kv, heads = 131072, 8 * 128, 32 * 128
    assert (cp8["cp"], cp8["dp_shard"], cp8["tokens_per_microbatch"]) == (8, 1, seq // 8)
    # the same tokens per rank as 16k tokens without cp; the same FSDP shards (dp_shard x cp = 8)
    assert cp8["activation_bytes"] == one16k["activation_bytes"]
    assert cp8["logits_bytes"] == one16k["logits_bytes"]
    assert cp8["param_bytes"] == one16k["param_bytes"] and one16k["cp_mask_bytes"] == 0
    assert cp8["cp_gather_bytes"] == 4 * seq * (kv + heads) * 2
    assert cp8["cp_mask_bytes"] == (seq // 8) * seq * (1 + 2)  # 2 GiB of booleans + a bf16 copy
    assert cp4["cp_mask_bytes"] == 2 * cp8["cp_mask_bytes"] and cp4["activation_bytes"] > cp8["activation_bytes"]
    assert cp8["fits"] and cp8["total_bytes"] < 0.8 * cp8["gpu_bytes"]
    assert cp8["total_bytes"] == sum(cp8[k] for k in ("param_bytes", "grad_bytes", "optimizer_bytes",
                                                       "fsdp_transient_bytes", "activation_bytes",
                                                       "cp_gather_bytes", "cp_mask_bytes"))


def test_plan_cli_errors_are_one_line():
    out = subprocess.run([sys.executable, "-m", "titan_jepa.plan", "--config",
                          "train_configs/llama3_8b_h200.toml", "--world-size", "8", "--trainig.steps", "3"],
                         cwd=ROOT, env=PLAN_ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "training" in out.stderr


def measure_worker(cases):
    """One real training step per config on this rank; every rank's measured state bytes
    and the number of logits elements it held."""
    import torch.distributed as dist

    from titan_jepa.config import load_config
    from titan_jepa.models.llama import build_model
    from titan_jepa.objectives.next_token import next_token_loss_sum
    from titan_jepa.optim import build_optimizer
    from titan_jepa.parallel.loss_parallel import loss_context
    from titan_jepa.parallel.mesh import ParallelDims, build_mesh, init_distributed
    from titan_jepa.parallel.parallelize import parallelize, write_sharded
    from titan_jepa.plan import measured_state_bytes
    from titan_jepa.config.model import model_args_from_config

    results = []
    for cfg_dict in cases["cases"]:
        cfg = load_config(extra=cfg_dict)
        _, world, device = init_distributed(cfg)
        dims = ParallelDims.from_config(cfg, world)
        args = model_args_from_config(cfg, 0)
        mesh, _ = build_mesh(dims, "cpu")
        model = build_model(args, device="meta")
        parallelize(model, dims, mesh, cfg)
        model.to_empty(device=device)
        model.init_weights(seed=0, buffer_device=device, write=write_sharded)
        optimizer = build_optimizer(model, cfg, "cpu")
        # one micro-batch of the config's shape; the output's hook sees this rank's logits
        shape = (cfg.training.local_batch_size, cfg.training.seq_len)
        tokens = torch.randint(0, args.vocab_size, shape, generator=torch.Generator().manual_seed(0))
        logits_elems = []
        model.output.register_forward_hook(lambda m, i, out: logits_elems.append(
            out.to_local().numel() if hasattr(out, "to_local") else out.numel()))
        with loss_context(model):
            next_token_loss_sum(model(tokens).logits, tokens.roll(-1, 1)).backward()
        optimizer.step()
        everyone = [None] * world
        dist.all_gather_object(everyone, {**measured_state_bytes(model, optimizer),
                                          "logits_elems": logits_elems[0]})
        results.append(everyone)
    return results


PLAN_RANKS = """
import json, sys
from titan_jepa.config import load_config
from titan_jepa.plan import plan
out = []
for extra in json.loads(sys.argv[1]):
    cfg = load_config(extra=extra)
    out.append([vars(plan(cfg, 2, rank)) for rank in range(2)])
print(json.dumps(out))
"""


def test_plan_bytes_equal_a_real_two_rank_run(demo_dir, tmp_path):
    cases = {
        # 2305 rows do not split evenly: FSDP pads rank 1's shard of the embedding and output
        "fsdp": tiny_config(tmp_path / "fsdp", demo_dir, model={"vocab_size": 2305}),
        # TP alone: the untied embedding's gradient is whole on each rank
        "tp": tiny_config(tmp_path / "tp", demo_dir, parallelism={"tp": 2}),
    }
    planner = subprocess.Popen([sys.executable, "-c", PLAN_RANKS, json.dumps(list(cases.values()))],
                               cwd=ROOT, env=PLAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    measured = dict(zip(cases, launch(2, {"cases": list(cases.values())}, tmp_path, fn=measure_worker)))
    stdout, stderr = planner.communicate(timeout=300)
    assert planner.returncode == 0, stderr[-3000:]
    planned = dict(zip(cases, json.loads(stdout)))
    for name in cases:
        for rank in range(2):
            got, want = planned[name][rank], measured[name][rank]
            for key in ("local_param_elems", "param_bytes", "grad_bytes", "optimizer_bytes"):
                assert got[key] == want[key], (name, rank, key, got[key], want[key])
            # the head term counts the logits elements this rank really holds (fp32 logits
            # + fp32 copy + fp32 log-probabilities: 12 bytes each)
            assert got["logits_bytes"] == want["logits_elems"] * 12, (name, rank)
    # FSDP halves the state (up to padding), and the padding lands on rank 1's storage
    fsdp = planned["fsdp"]
    assert fsdp[0]["param_bytes"] == fsdp[1]["param_bytes"]
    assert fsdp[0]["local_param_elems"] > fsdp[1]["local_param_elems"]
    assert planned["tp"][0]["grad_bytes"] > planned["tp"][0]["param_bytes"]
    # loss parallel: under TP each rank holds half the vocabulary of the logits
    assert [measured["tp"][r]["logits_elems"] for r in range(2)] == [4 * 64 * 2304 // 2] * 2
    assert measured["fsdp"][0]["logits_elems"] == 4 * 64 * 2305


# ---- float8 ---------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_float8_is_refused_on_cpu_with_a_clear_message():
    from titan_jepa.config import ConfigError, load_config
    from titan_jepa.models.llama import build_model, model_args_for
    from titan_jepa.parallel.mesh import ParallelDims
    from titan_jepa.parallel.parallelize import parallelize

    cfg = load_config(extra={"float8": {"enable": True}, "training": {"device": "cpu"}})
    model = build_model(model_args_for("debug"), device="meta")
    with pytest.raises(ConfigError, match=r"float8.enable = true needs CUDA.*set float8.enable = false"):
        parallelize(model, ParallelDims(1, 1, 1, 1), None, cfg)
    with pytest.raises(ConfigError, match="float8.recipe"):
        load_config(extra={"float8": {"recipe": "blockwise"}})


def test_float8_converts_the_block_linears_but_not_the_output():
    from titan_jepa.models.llama import build_model, model_args_for
    from titan_jepa.parallel.float8 import float8_module_filter

    model = build_model(model_args_for("debug"), device="meta")
    chosen = [fqn for fqn, m in model.named_modules() if float8_module_filter(m, fqn)]
    assert len(chosen) == 7 * model.args.n_layers  # wq wk wv wo w1 w2 w3 per block
    assert "output" not in chosen and all(f.startswith("layers.") for f in chosen)



def _train_float8_anywhere(cfg: dict) -> list[float]:
    """Train with the float8 path on CPU: only the CUDA/sm89 check is bypassed; the
    conversion, TP, FSDP2 and the float8 matmuls are the real ones."""
    import titan_jepa.parallel.float8 as float8

    float8.check_float8 = lambda cfg, device: None
    return run_train(cfg)


def _train_each_float8(cases: dict) -> list[list[float]]:
    """Several float8 runs one after the other in the same processes (one launch)."""
    return [_train_float8_anywhere(c) for c in cases["runs"]]


@pytest.fixture(scope="module")
def float8_runs(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("float8")
    base = {"training": {"local_batch_size": 2, "steps": 4}}
    f8 = {"enable": True, "recipe": "tensorwise"}
    two = [tiny_config(tmp / "fsdp", demo_dir, **base, float8=f8),
           tiny_config(tmp / "tp", demo_dir, **base, float8=f8, parallelism={"tp": 2})]
    fsdp, tp = launch(2, {"runs": two}, tmp, fn=_train_each_float8)  # one launch for both layouts
    return {
        "fp32": launch(1, tiny_config(tmp / "fp32", demo_dir, **base), tmp),
        "one": launch(1, tiny_config(tmp / "one", demo_dir, **base, float8=f8), tmp, fn=_train_float8_anywhere),
        "fsdp": fsdp, "tp": tp,
    }


def test_float8_path_trains_and_is_layout_independent(float8_runs):
    """The float8 training path (torchao Float8Linear in the blocks) run on CPU: it really
    quantises (losses move off the fp32 run's, by float8-sized amounts), and FSDP2 on 2
    ranks and TP=2 give the 1-process float8 losses."""
    fp32, one = float8_runs["fp32"], float8_runs["one"]
    assert one != fp32 and one == pytest.approx(fp32, rel=1e-2)
    assert float8_runs["fsdp"] == pytest.approx(one, rel=1e-5)
    assert float8_runs["tp"] == pytest.approx(one, rel=1e-4)


def test_float8_conversion_of_every_recipe():
    from titan_jepa.models.llama import build_model, model_args_for
    from titan_jepa.parallel.float8 import convert_to_float8

    for recipe in ("tensorwise", "rowwise", "rowwise_with_gw_hp"):
        model = convert_to_float8(build_model(model_args_for("debug"), device="meta"), recipe)
        converted = [fqn for fqn, m in model.named_modules() if type(m).__name__ == "Float8Linear"]
        assert len(converted) == 7 * model.args.n_layers and type(model.output) is torch.nn.Linear

# ---- profiling and plots --------------------------------------------------------------

def test_profiler_traces_the_chosen_step_and_metrics_plot(demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"steps": 3},
                      profiling={"enable_profiling": True, "profile_steps": [2],
                                 "enable_memory_snapshot": True})
    losses = launch(1, cfg, tmp_path)
    assert len(losses) == 3
    run = tmp_path / "t"
    traces = sorted(p.relative_to(run).as_posix() for p in (run / "profile_traces").rglob("*.json"))
    assert traces == ["profile_traces/step2/rank0_trace.json"]
    trace = json.loads((run / traces[0]).read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert any(n.startswith("aten::mm") for n in names)  # forward/backward matmuls were traced
    assert not (run / "memory_snapshot").exists()  # CUDA only: skipped with a warning on CPU

    # the run's metrics, and a JEPA run's (synthetic) metrics, drawn as one PNG
    sys.path.insert(0, str(ROOT / "tools"))
    import plot_metrics

    jepa = tmp_path / "jepa_run" / "metrics.jsonl"
    jepa.parent.mkdir()
    jepa.write_text("".join(json.dumps({"step": s, "loss": 3 - 0.1 * s, "jepa_loss": 0.5 / s,
                                        "tokens_per_s": 1000.0 + s, "lr": 1e-4 * s}) + "\n"
                            for s in range(1, 6)) + '{"step": 6, "lo')  # a torn last line
    out = tmp_path / "plot.png"
    plot_metrics.main([str(run / "metrics.jsonl"), str(jepa.parent), "-o", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [r["step"] for r in plot_metrics.read_metrics(jepa)] == [1, 2, 3, 4, 5]
