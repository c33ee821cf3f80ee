"""The README walkthrough: every command of its bash blocks runs, in order, on a tiny
HF-format Llama made here (no hub access), 2 CPU processes and the demo data."""

import json
import os
import re
import shutil
import subprocess

import torch

from helpers import ROOT, TOKENIZER
from test_hf_chat_template import write_template
from titan_jepa.checkpoint.hf import hf_config_dict
from titan_jepa.models.llama import model_args_for

# the tiny run: the debug model's shape, CPU-friendly settings, a few steps
SMALL = ("--model.attn_backend sdpa --training.mixed_precision_param float32 --training.steps 4 "
         "--training.global_batch_size 4 --training.local_batch_size 2 --training.seq_len 256 "
         "--optimizer.lr 1e-3 --metrics.log_freq 1 --metrics.flop_counter_steps 0 "
         "--metrics.enable_tensorboard false --validation.freq 2 --validation.steps 2 "
         "--validation.eval_samples 4 --validation.eval_max_new_tokens 8 --checkpoint.interval 2 "
         "--data.num_epochs -1")


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Walkthrough: fine-tune Llama-3.2-1B-Instruct with LLM-JEPA as in the paper")
    end = readme.index("\n## ", start + 1)
    return re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)


def make_tiny_hf_model(folder):
    """A Llama-3.2-Instruct-like folder: transformers' safetensors of a randomly initialised
    LlamaForCausalLM of the debug shape, config.json, tokenizer_config.json with a chat
    template, original/tokenizer.model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {k: v for k, v in hf_config_dict(model_args_for("debug")).items()
           if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(folder, safe_serialization=True)
    write_template(folder)
    (folder / "original").mkdir()
    shutil.copy(TOKENIZER, folder / "original" / "tokenizer.model")


def test_walkthrough_commands_run_on_a_tiny_model(demo_dir, tmp_path):
    blocks = walkthrough_blocks()
    assert len(blocks) == 4 and blocks[0].startswith("# settings"), "the walkthrough's blocks changed"
    model = tmp_path / "models" / "Llama-3.2-1B-Instruct"
    make_tiny_hf_model(model)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(demo_dir / "regex_train.jsonl", data / "synth_train.jsonl")
    test_lines = (demo_dir / "regex_test.jsonl").read_text().splitlines()[:12]
    (data / "synth_test.jsonl").write_text("\n".join(test_lines) + "\n")
    run = tmp_path / "outputs" / "llama32_1b_jepa_synth"
    settings = (f"MODEL={model}\nDATA={data}\nRUN={run}\nNPROC=2\nFLAVOR=debug\nSMALL='{SMALL}'\n")
    # every settings variable of the README is set here
    assert re.findall(r"^(\w+)=", blocks[0], flags=re.M) == re.findall(r"^(\w+)=", settings, flags=re.M)
    script = "set -euo pipefail\n" + settings + "\n".join(blocks[1:])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = proc.stdout
    assert f"initial weights loaded from {model} (hf)" in out
    # the run rendered its data with the HF template and validated at steps 2 and 4
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"]["chat_template"] == "hf" and config["jepa"]["enable"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r for r in rows if "val/loss" in r}
    assert sorted(val) == [2, 4] and all("val/jepa_loss" in r and "val/accuracy" in r for r in val.values())
    best = json.loads((run / "checkpoint" / "best.json").read_text())
    assert best["metric"] == "val/accuracy" and (run / "checkpoint" / f"step-{best['step']}").is_dir()
    assert f'"step": {best["step"]}' in out  # the cat of best.json
    assert (run / "metrics.png").stat().st_size > 0
    # the export answers exactly as the DCP weights did
    final = json.loads((run / "eval_final.json").read_text())
    exported = json.loads((run / "eval_hf.json").read_text())
    assert final["n"] == exported["n"] == 12
    assert [p["prediction"] for p in final["predictions"]] == [p["prediction"] for p in exported["predictions"]]
    assert final["checkpoint"].startswith("dcp:") and exported["checkpoint"].startswith("hf:")
    assert {"config.json", "tokenizer_config.json"} <= {p.name for p in (run / "hf").iterdir()}
