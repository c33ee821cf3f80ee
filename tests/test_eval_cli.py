"""python -m titan_jepa.eval on checkpoints of a short training run (DCP, HF, LoRA)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, launch, tiny_config
from titan_jepa.config import load_config
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.eval.generate import greedy_generate_uncached
from titan_jepa.eval.run import evaluate, generation_prompt, read_rows
from titan_jepa.checkpoint.weights import load_model


# DCP warns on every single-process load
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
# the FLOP counter of the first step costs seconds on CPU; these tests do not need it
FAST_METRICS = {"flop_counter_steps": 0}

def _train(tmp: Path, demo_dir: Path, **extra) -> Path:
    cfg = tiny_config(tmp, demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                      training={"steps": 3, "local_batch_size": 2, "seq_len": 96},
                      checkpoint={"enable": True, "interval": 3}, metrics=FAST_METRICS, **extra)
    launch(1, cfg, tmp)
    return tmp / "t"


@pytest.fixture(scope="module")
def run_dir(demo_dir, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("evalrun"), demo_dir)


def _eval_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "titan_jepa.eval", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_eval_cli_on_training_checkpoint(run_dir, demo_dir, tmp_path):
    out = tmp_path / "results.json"
    p = _eval_cli("--config", run_dir / "config.toml", "--checkpoint", run_dir / "checkpoint",
                  "--data", demo_dir / "regex_test.jsonl", "--limit", 10, "--batch-size", 4,
                  "--max-new-tokens", 12, "--out", out, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "exact: accuracy" in p.stdout
    res = json.loads(out.read_text())
    assert res["scorer"] == "exact" and res["n"] == 10 and len(res["predictions"]) == 10
    assert res["checkpoint"].endswith("step-3")  # the latest complete checkpoint
    golds = [json.loads(line)["messages"][-1]["content"]
             for line in (demo_dir / "regex_test.jsonl").read_text().splitlines()[:10]]
    assert [r["gold"] for r in res["predictions"]] == golds
    assert res["accuracy"] == sum(r["correct"] for r in res["predictions"]) / 10
    assert all(r["prediction"].strip() != r["gold"].strip() or r["correct"] for r in res["predictions"])


def test_eval_cli_errors_are_one_line(tmp_path, demo_dir):
    p = _eval_cli("--checkpoint", tmp_path / "nope", "--data", demo_dir / "regex_test.jsonl",
                  "--tokenizer", ROOT / "assets" / "tokenizer" / "tokenizer.model", cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: --checkpoint '{tmp_path / 'nope'}' does not exist"]


def _setup(run_dir):
    cfg = load_config(run_dir / "config.toml")
    tok = build_tokenizer(cfg.tokenizer)
    return cfg, tok


def test_hf_export_gives_same_predictions_and_uncached_agrees(run_dir, demo_dir, tmp_path):
    from titan_jepa.checkpoint.hf import save_hf_checkpoint

    cfg, tok = _setup(run_dir)
    rows = read_rows(demo_dir / "regex_test.jsonl", limit=6)
    model, _ = load_model(cfg, run_dir / "checkpoint" / "step-3", tok.vocab_size, torch.device("cpu"),
                          torch.float32)
    res = evaluate(model, tok, rows, "exact", batch_size=4, max_new_tokens=10, progress=False)
    save_hf_checkpoint(model.state_dict(), model.args, tmp_path / "hf")
    hf_model, source = load_model(cfg, tmp_path / "hf", tok.vocab_size, torch.device("cpu"), torch.float32)
    assert source.startswith("hf:")
    res_hf = evaluate(hf_model, tok, rows, "exact", batch_size=3, max_new_tokens=10, progress=False)
    assert [r["prediction"] for r in res_hf["predictions"]] == [r["prediction"] for r in res["predictions"]]
    prompt = generation_prompt(tok, rows[0]["messages"])
    assert prompt[-1] == tok.encode("\n\n")[-1]
    assert tok.decode(greedy_generate_uncached(model, tok, prompt, 10)) == res["predictions"][0]["prediction"]


def test_hellaswag_scores_letter_logits_of_whole_prompt(run_dir):
    cfg, tok = _setup(run_dir)
    model, _ = load_model(cfg, run_dir / "checkpoint", tok.vocab_size, torch.device("cpu"), torch.float32)
    system = "Which one of A), B), C), or D) is the best ending for the context? Answer A, B, C, or D."
    rows = [{"messages": [{"role": "system", "content": system},
                          {"role": "user", "content": f"context {i} " * (3 + 40 * i) + "\nA) x\nB) y\nC) z\nD) w"},
                          {"role": "assistant", "content": "ABCD"[i]}]} for i in range(4)]
    res = evaluate(model, tok, rows, "hellaswag", batch_size=3, progress=False)
    letters = [tok.encode(c)[0] for c in "ABCD"]
    for row, rec in zip(rows, res["predictions"]):
        prompt = generation_prompt(tok, row["messages"])
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1]
        assert rec["prediction"] == "ABCD"[int(logits[letters].argmax())]
        assert rec["correct"] == (rec["prediction"] == rec["gold"])


def test_lora_checkpoint_is_merged_on_load(demo_dir, tmp_path):
    from titan_jepa.models.lora import LoRALinear, apply_lora
    from titan_jepa.models.llama import build_model
    from titan_jepa.config import Lora
    from titan_jepa.config.model import model_args_from_config
    import torch.distributed.checkpoint as dcp

    run = _train(tmp_path, demo_dir, lora={"enable": True, "rank": 4, "target_modules": ["wq", "wv", "w2"]},
                 optimizer={"lr": 3e-2})
    cfg, tok = _setup(run)
    model, _ = load_model(cfg, run / "checkpoint", tok.vocab_size, torch.device("cpu"), torch.float32)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    # the same checkpoint loaded into an unmerged LoRA model gives the same logits
    ref = build_model(model_args_from_config(cfg, tok.vocab_size), device="cpu")
    apply_lora(ref, Lora(enable=True, rank=4, alpha=cfg.lora.alpha, target_modules=["wq", "wv", "w2"]))
    state = {"model": ref.state_dict()}
    dcp.load(state, checkpoint_id=str(run / "checkpoint" / "step-3"), no_dist=True)
    ref.load_state_dict(state["model"])
    assert torch.count_nonzero(ref.layers["0"].attention.wq.lora_b.weight) > 0
    tokens = torch.randint(0, 2000, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, ref(tokens).logits, rtol=1e-5, atol=1e-5)
    # adapters saved alone: the base weights come from checkpoint.initial_load_path
    from titan_jepa.models.lora import is_lora_name

    sd = ref.state_dict()
    dcp.save({"model": {k: v for k, v in sd.items() if not is_lora_name(k)}},
             checkpoint_id=str(tmp_path / "base"), no_dist=True)
    dcp.save({"model": {k: v for k, v in sd.items() if is_lora_name(k)}},
             checkpoint_id=str(tmp_path / "adapters"), no_dist=True)
    cfg.checkpoint.initial_load_path = str(tmp_path / "base")
    adapters_model, _ = load_model(cfg, tmp_path / "adapters", tok.vocab_size, torch.device("cpu"),
                                   torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(adapters_model(tokens), ref(tokens), rtol=1e-5, atol=1e-5)
