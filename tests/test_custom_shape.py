"""A model shape that is no flavor, from TOML: it trains, its checkpoints carry the shape
(model_args.json), tools/convert_hf.py exports it with no option, and transformers'
LlamaForCausalLM computes our logits; bad combinations are one-line ConfigErrors."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch

from helpers import ROOT, TOKENIZER
from titan_jepa.config import ConfigError, JobConfig, load_config
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import RopeScaling

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

# dim 96 / 6 heads (head_dim 16) / 2 KV heads; theta 1e4 with an original context of 64:
# the RoPE wavelengths 2 pi 1e4^(i/8) fall in all three Llama-3.1 bands (< 16, 16..64, > 64)
MODEL_TOML = """
[model]
flavor = "debug"
dim = 96
n_layers = 2
n_heads = 6
n_kv_heads = 2
multiple_of = 32
ffn_dim_multiplier = 1.5
rope_theta = 10000.0
rope_scaling = "llama3"
rope_factor = 4.0
rope_original_max_seq_len = 64
tie_embeddings = true
max_seq_len = 512
"""


def _write_toml(tmp, demo_dir):
    text = MODEL_TOML + f"""
[job]
name = "custom"
dump_folder = "{tmp}"

[tokenizer]
path = "{TOKENIZER}"

[data]
path = "{demo_dir / 'corpus.jsonl'}"

[training]
steps = 2
global_batch_size = 4
local_batch_size = 2
seq_len = 64
device = "cpu"

[optimizer]
lr = 1e-2

[metrics]
enable_tensorboard = false
flop_counter_steps = 0

[checkpoint]
enable = true
interval = 2
model_only_export = true
"""
    path = tmp / "custom.toml"
    path.write_text(text)
    return path


def test_model_fields_resolve_on_the_flavor(tmp_path):
    (tmp_path / "m.toml").write_text(MODEL_TOML)
    args = model_args_from_config(load_config(tmp_path / "m.toml"), 2000)
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.head_dim) == (96, 2, 6, 2, 16)
    assert args.ffn_hidden_dim == 384 and args.tie_embeddings and args.rope_theta == 10000.0
    assert args.rope_scaling == RopeScaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=64)
    assert args.vocab_size == 2304 and args.norm_eps == 1e-5  # unset: the debug flavor's
    plain = model_args_from_config(load_config(extra={"model": {"rope_scaling": "none",
                                                                 "ffn_dim_multiplier": 0.0}}), 0)
    assert plain.rope_scaling is None and plain.ffn_dim_multiplier is None and plain.dim == 128


@pytest.mark.parametrize("model,match", [
    ({"dim": 100, "n_heads": 6}, r"^\[model\] dim = 100 is not divisible by n_heads = 6"),
    ({"n_heads": 6, "n_kv_heads": 4, "dim": 96}, r"n_heads = 6 is not a multiple of n_kv_heads = 4"),
    ({"dim": 96, "n_heads": 32}, r"head_dim = dim / n_heads = 3 must be even"),
    ({"rope_scaling": "none", "rope_factor": 2.0}, r"rope_scaling = 'none' but model.rope_factor is set"),
    ({"flavor": "small", "rope_factor": 2.0}, r"flavor 'small' has no RoPE scaling; also set model.rope_scaling"),
    ({"rope_low_freq_factor": 5.0}, r"0 < low_freq_factor < high_freq_factor"),
    ({"n_layers": 0}, r"model.n_layers = 0 must be positive \(or -1"),
])
def test_bad_shapes_are_one_line(model, match):
    with pytest.raises(ConfigError, match=match) as e:
        model_args_from_config(load_config(extra={"model": model}), 0)
    assert "\n" not in str(e.value)


def test_removed_model_name_is_ignored_with_a_warning(tmp_path):
    (tmp_path / "old.toml").write_text('[model]\nname = "llama3"\nflavor = "debug"\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(tmp_path / "old.toml")
    assert cfg.model.flavor == "debug" and not hasattr(cfg.model, "name")
    assert [str(w.message) for w in caught if w.category is FutureWarning] == [
        f"{tmp_path / 'old.toml'}: model.name is ignored (the model is always Llama; its shape is "
        f"model.flavor plus the model.* fields): delete it from the config"]


def _convert(*argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / "convert_hf.py"), *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_custom_shape_trains_exports_and_matches_transformers(demo_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from titan_jepa.train import train
    from titan_jepa.checkpoint.weights import load_hf, load_model
    from titan_jepa.errors import CheckpointError

    losses = train(load_config(_write_toml(tmp_path, demo_dir)))
    assert len(losses) == 2 and all(l == l for l in losses)
    run = tmp_path / "custom"
    export = run / "checkpoint" / "model-only" / "step-2"
    saved = json.loads((export / "model_args.json").read_text())
    assert (saved["dim"], saved["n_heads"], saved["n_kv_heads"], saved["tie_embeddings"]) == (96, 6, 2, True)
    assert (run / "checkpoint" / "step-2" / "model_args.json").read_text() == (export / "model_args.json").read_text()

    # --to-hf needs no option: the shape is the export's model_args.json; --config gives the same
    r = _convert("--to-hf", "--src", export, "--dst", tmp_path / "hf")
    assert r.returncode == 0, r.stderr
    from convert_hf import main as convert_main  # (tools/ is on sys.path: tests/helpers.py)

    convert_main(["--to-hf", "--src", str(run / "checkpoint" / "step-2"), "--dst", str(tmp_path / "hf2"),
                  "--config", str(run / "config.toml")])
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg == json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert (hf_cfg["hidden_size"], hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"],
            hf_cfg["tie_word_embeddings"], hf_cfg["rope_scaling"]["original_max_position_embeddings"]) == (
        96, 6, 2, True, 64)

    # ours (the eval's loader: the shape from model_args.json, no [model] given) == transformers
    ours, _ = load_model(JobConfig(), export, 0, torch.device("cpu"), torch.float32)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens = torch.randint(0, 2304, (2, 300), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(tokens).logits
        assert want.abs().max() > 1.0
        assert (hf(tokens).logits - want).abs().max().item() <= 1e-4
        # the training checkpoint (model + optimizer entries) loads to the same model
        from_ckpt, _ = load_model(JobConfig(), run / "checkpoint", 0, torch.device("cpu"), torch.float32)
        assert torch.equal(from_ckpt(tokens).logits, want)

    # a DCP folder without model_args.json (older runs): the shape comes from [model] of the
    # config, and a wrong shape is one line; convert_hf then needs --config
    bare = tmp_path / "bare"
    shutil.copytree(export, bare)
    (bare / "model_args.json").unlink()
    with pytest.raises(CheckpointError, match=r"different model .*shape tok_embeddings.weight \(2304, 96\) vs "
                                              r"model \(2304, 128\)"):
        load_model(JobConfig(), bare, 0, torch.device("cpu"), torch.float32)
    again, _ = load_model(load_config(run / "config.toml"), bare, 0, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens[:, :40]).logits, want[:, :40], rtol=0, atol=1e-5)
    with pytest.raises(SystemExit):
        convert_main(["--to-hf", "--src", str(bare), "--dst", str(tmp_path / "hf3")])
    assert not (tmp_path / "hf3").exists()

    # a run starting from this HF folder with no model.flavor takes the shape of its config.json
    from titan_jepa.models.llama import build_model, model_args_for

    start = load_config(extra={"checkpoint": {"initial_load_path": str(tmp_path / "hf"),
                                              "initial_load_format": "hf"}})
    args = model_args_from_config(start, 0)
    # (config.json has the FFN size alone: other multiple_of / ffn_dim_multiplier giving it)
    assert args.ffn_hidden_dim == 384
    assert replace(args, multiple_of=32, ffn_dim_multiplier=1.5) == ours.args
    fresh = build_model(args, "cpu")
    load_hf(fresh, tmp_path / "hf", "checkpoint.initial_load_path")
    with torch.no_grad():
        torch.testing.assert_close(fresh(tokens[:, :40]).logits, want[:, :40], rtol=0, atol=1e-5)

    # starting another shape from it is one line naming the settings to change

    debug = build_model(model_args_for("debug"), "cpu")
    with pytest.raises(CheckpointError, match=r"config.json has dim 96, n_layers 2, n_heads 6, tie_embeddings "
                                              r"True but the model has dim 128, n_layers 4, n_heads 4, "
                                              r"tie_embeddings False; set model.dim = 96, model.n_layers = 2, "
                                              r"model.n_heads = 6, model.tie_embeddings = true$"):
        load_hf(debug, tmp_path / "hf", "checkpoint.initial_load_path")
