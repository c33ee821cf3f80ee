"""Config loading, CLI overrides, and one clear message per user mistake."""

from pathlib import Path

import pytest

from titan_jepa.config import ConfigError, config_from_argv, load_config, parse_cli_overrides, write_config
from titan_jepa.models.llama import build_model
from titan_jepa.parallel.mesh import ParallelDims
from titan_jepa.train import model_args_from_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "train_configs").glob("*.toml"))


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_cli_overrides_both_forms():
    cfg = config_from_argv(["--config", str(ROOT / "train_configs/debug_cpu.toml"),
                            "--training.steps", "7", "--optimizer.lr=1e-3", "--compile.enable",
                            "--job.name", "x"])
    assert cfg.training.steps == 7
    assert cfg.optimizer.lr == 1e-3
    assert cfg.compile.enable is True
    assert cfg.job.name == "x"


def test_negative_number_value():
    _, ov = parse_cli_overrides(["--model.vocab_size", "-1"])
    assert ov == [("model", "vocab_size", "-1")]


@pytest.mark.parametrize("text,message", [
    ("[trainig]\nsteps = 3\n", r"unknown section \[trainig\]; did you mean 'training'\?"),
    ("[training]\nstep = 3\n", r"unknown key 'step' in \[training\]; did you mean 'steps'\?"),
    ("[training]\nsteps = 'ten'\n", r"training.steps: expected an integer, got 'ten'"),
    ("[optimizer]\nlr = true\n", r"optimizer.lr: expected a number"),
    ("[model]\nattn_backend = 'flash'\n", r"model.attn_backend = 'flash' is not one of sdpa, flex"),
    ("[lr_scheduler]\ndecay_type = 'cosin'\n", r"did you mean 'cosine'"),
    ("[training]\nlocal_batch_size = 0\n", r"training.local_batch_size must be positive"),
    ("steps = 3\n", r"top-level key 'steps' must be a \[section\]"),
    ("[training\n", r"not valid TOML"),
])
def test_file_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_cli_errors():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'lrr' in \[optimizer\]; did you mean 'lr'"):
        config_from_argv(["--optimizer.lrr", "1"])
    with pytest.raises(ConfigError, match=r"command line: training.steps: expected an integer, got 'x'"):
        config_from_argv(["--training.steps", "x"])
    with pytest.raises(ConfigError, match=r"'--steps' is not --config or --section.key"):
        config_from_argv(["--steps", "3"])
    with pytest.raises(ConfigError, match=r"config file 'nope.toml' does not exist"):
        config_from_argv(["--config", "nope.toml"])


def test_parallel_degree_errors():
    cfg = load_config(extra={"parallelism": {"dp_shard": 2, "tp": 2}})
    with pytest.raises(ConfigError, match=r"= 4 but the world size is 2"):
        ParallelDims.from_config(cfg, 2)
    cfg = load_config(extra={"parallelism": {"tp": 3}})
    with pytest.raises(ConfigError, match=r"world size 4 is not divisible by .* = 3"):
        ParallelDims.from_config(cfg, 4)
    cfg = load_config(extra={"parallelism": {"tp": 3}, "training": {"seq_len": 96}})
    dims = ParallelDims.from_config(cfg, 3)
    with pytest.raises(ConfigError, match=r"parallelism.tp=3 does not divide the model n_heads \(4\)"):
        dims.check(cfg, model_args_from_config(cfg, 100))
    cfg = load_config(extra={"training": {"global_batch_size": 6, "local_batch_size": 4}})
    dims = ParallelDims.from_config(cfg, 1)
    with pytest.raises(ConfigError, match=r"global_batch_size=6 is not a multiple of"):
        dims.check(cfg, model_args_from_config(cfg, 100))


def test_model_errors():
    with pytest.raises(ConfigError, match=r"unknown model flavor '9B'"):
        model_args_from_config(load_config(extra={"model": {"flavor": "9B"}}), 100)
    with pytest.raises(ConfigError, match=r"the tokenizer has 5000 tokens .* set model.vocab_size >= 5000"):
        model_args_from_config(load_config(), 5000)


def test_resolved_config_written(tmp_path):
    cfg = load_config(ROOT / "train_configs/debug_cpu.toml", [("training", "steps", "3")])
    out = write_config(cfg, tmp_path)
    again = load_config(out)
    assert again == cfg


def _world_size(cfg):
    """The world each config is meant for: 2 CPU processes, or 8 GPUs per replica group (all
    degrees given: their product)."""
    p = cfg.parallelism
    if p.dp_shard > 0:
        return p.dp_replicate * p.dp_shard * p.tp * p.pp
    per_node = 2 if cfg.training.device == "cpu" else 8
    return p.dp_replicate * per_node


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_parses_validates_and_builds(path):
    cfg = load_config(path)
    args = model_args_from_config(cfg, 0)
    dims = ParallelDims.from_config(cfg, _world_size(cfg))
    accum = dims.check(cfg, args)
    assert accum >= 1
    model = build_model(args, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == args.num_params()
