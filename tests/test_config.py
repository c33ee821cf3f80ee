"""Config loading, CLI overrides, and one clear message per user mistake."""

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from helpers import launch, tiny_config
from titan_jepa.errors import DataError, TokenizerError, TrainingError, UserError, run_main
from titan_jepa.config import (
    MOVED,
    ConfigError,
    JobConfig,
    choices,
    config_from_argv,
    load_config,
    parse_cli_overrides,
    write_config,
)
from titan_jepa.models.llama import build_model
from titan_jepa.parallel.mesh import ParallelDims
from titan_jepa.config.model import model_args_from_config

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
    ("[model]\nattn_backend = 'flash'\n", r"c.toml: model.attn_backend = 'flash' is not one of sdpa, flex; "
                                          r"did you mean 'flex'\?$"),
    ("[data]\nshard_by = 'rows'\n", r"data.shard_by = 'rows' is not one of record, file"),
    ("[data]\nkind = 3\n", r"data.kind = 3 is not one of text, chat, pairs"),
    ("[lora]\ntarget_modules = ['wq', 'w4']\n", r"lora.target_modules = 'w4' is not one of wq, wk, wv, wo, w1, w2, w3"),
    ("[jepa]\nsame_flop = true\n", r"c.toml: \[jepa\] same_flop moved to \[checkpoint\] same_flop; rename it there$"),
    ("[optimizer]\nname = 'AdamW'\n", r"\[optimizer\] name was removed \(the optimizer is always AdamW\)"),
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
    # enumerated values are checked by the same loader from the CLI
    with pytest.raises(ConfigError, match=r"^command line: stp.mode = 'e2f' is not one of random_span, e2e, "
                                          r"curvature, random_span_mask; did you mean 'e2e'\?$"):
        config_from_argv(["--stp.mode", "e2f"])
    with pytest.raises(ConfigError, match=r"^command line: lora.target_modules = 'wz' is not one of"):
        config_from_argv(["--lora.target_modules", "wq,wz"])
    with pytest.raises(ConfigError, match=r"^command line: \[jepa\] same_flop moved to \[checkpoint\] same_flop"):
        config_from_argv(["--jepa.same_flop", "true"])
    cfg = config_from_argv(["--lora.target_modules", "wq,w2", "--checkpoint.same_flop", "--data.kind", "chat"])
    assert (cfg.lora.target_modules, cfg.checkpoint.same_flop, cfg.data.kind) == (["wq", "w2"], True, "chat")


def test_run_main_reports_every_user_error_as_one_line(capsys):
    cleaned = []
    for err in (ConfigError("bad value; use x"), DataError("data.path 'x' does not exist"),
                TokenizerError("no <|mask|> token"), TrainingError("step 3: loss is nan")):
        def fail(err=err):
            raise err

        with pytest.raises(SystemExit) as e:
            run_main(fail, cleanup=lambda: cleaned.append(1))
        assert e.value.code == 2 and isinstance(err, UserError)
        assert capsys.readouterr().err == f"error: {err}\n"
    assert run_main(lambda: 7, cleanup=lambda: cleaned.append(1)) == 7
    assert len(cleaned) == 5
    with pytest.raises(KeyError):  # a bug is not a user error: its traceback stays
        run_main(lambda: {}["x"])


def test_choices_come_from_the_literal_types():
    assert choices("data", "kind") == ("text", "chat", "pairs")
    assert choices("lora", "target_modules") == ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
    with pytest.raises(KeyError):
        choices("training", "steps")
    # every enumerated default is one of its choices, and every moved key's new place exists
    cfg = JobConfig()
    for section in dataclasses.fields(JobConfig):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            typ = typing.get_type_hints(type(getattr(cfg, section.name)))[f.name]
            if typing.get_origin(typ) is typing.Literal:
                assert getattr(getattr(cfg, section.name), f.name) in typing.get_args(typ)
    for new_section, new_key in MOVED.values():
        assert hasattr(getattr(cfg, new_section), new_key)
    assert not hasattr(cfg.jepa, "same_flop") and not hasattr(cfg.optimizer, "name")


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


def test_run_folder_config_records_the_steps_trained(demo_dir, tmp_path):
    # training.steps = -1: as many steps as one epoch of this (small) file gives; the
    # config.toml of the run folder is rewritten with that count
    data = tmp_path / "docs.jsonl"
    lines = (demo_dir / "corpus.jsonl").read_text().splitlines()[:6]
    data.write_text("\n".join(lines) + "\n")
    cfg = tiny_config(tmp_path, demo_dir, data={"path": str(data), "num_epochs": 1},
                      training={"steps": -1, "global_batch_size": 4, "local_batch_size": 2})
    losses = launch(1, cfg, tmp_path)
    written = load_config(tmp_path / "t" / "config.toml")
    assert 1 <= len(losses) < 50
    assert written.training.steps == len(losses)
    assert json.loads((tmp_path / "t" / "config.json").read_text())["training"]["steps"] == len(losses)


def _world_size(cfg):
    """The world each config is meant for: 2 CPU processes, or 8 GPUs per replica group (all
    degrees given: their product)."""
    p = cfg.parallelism
    if p.dp_shard > 0:
        return p.dp_replicate * p.dp_shard * p.cp * p.tp * p.pp
    per_node = 2 if cfg.training.device == "cpu" else 8
    return p.dp_replicate * per_node


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_parses_validates_and_builds(path, request):
    cfg = load_config(path)
    ck = cfg.checkpoint
    if ck.initial_load_path and Path(ck.initial_load_path).name == "SmolLM2-135M-Instruct":
        # the config's model folder is made by tools/import_gguf.py (README walkthrough), not
        # shipped: the tests' own import of the same GGUF stands in for it
        ck.initial_load_path = str(request.getfixturevalue("smollm2_hf"))
    args = model_args_from_config(cfg, 0)
    dims = ParallelDims.from_config(cfg, _world_size(cfg))
    accum = dims.check(cfg, args)
    assert accum >= 1
    model = build_model(args, device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert n == args.num_params()


@pytest.mark.parametrize("key,value,match", [
    ("optimizer.lr", "-0.001", "optimizer.lr = -0.001 must be positive"),
    ("optimizer.lr", "0", "optimizer.lr = 0.0 must be positive"),
    ("optimizer.lr", "nan", "expected a number"),
    ("optimizer.beta2", "1.0", r"optimizer.beta2 = 1.0 must be in \[0, 1\)"),
    ("optimizer.eps", "0", "optimizer.eps = 0.0 must be positive"),
    ("optimizer.weight_decay", "-0.1", "optimizer.weight_decay = -0.1 must be >= 0"),
    ("training.max_norm", "-1", "training.max_norm = -1.0 must be >= 0"),
    ("parallelism.comm_timeout_s", "0", "comm_timeout_s = 0 must be positive"),
])
def test_numeric_ranges_are_checked_by_the_config(key, value, match):
    """Out-of-range numbers stop at load time with one line naming the field, not in torch."""
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[(*key.split("."), value)])
