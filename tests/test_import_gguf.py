"""tools/import_gguf.py: a GGUF Llama file -> a Hugging Face folder (SmolLM2-135M-Instruct, Q4_1).

The real model is converted once per session (the ``smollm2_hf`` fixture, ~30 s); the error
cases run the command line as users do, on tiny GGUF files written here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from real_model import ROOT, import_gguf_tool, smollm2_gguf

PROMPTS = ["The capital of France is", "def fibonacci(n):", "<|im_start|>user\nHi!<|im_end|>\n"]


@pytest.fixture(scope="module")
def converted(smollm2_hf):
    """(model, tokenizer) read back from the converted folder with plain transformers."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(smollm2_hf).eval(), AutoTokenizer.from_pretrained(smollm2_hf)


def test_folder_holds_a_complete_hf_model(smollm2_hf):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (smollm2_hf / name).is_file(), name
    assert not smollm2_hf.with_name(smollm2_hf.name + ".tmp").exists()
    import gguf  # the tool's parse-once readers are gone after the import

    assert gguf.GGUFReader.__name__ == "GGUFReader" and gguf.get_tensor_name_map.__name__ == "get_tensor_name_map"
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in smollm2_hf.iterdir())  # readable by others
    cfg = json.loads((smollm2_hf / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]) == (30, 576, 49152)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (9, 3)
    assert cfg["tie_word_embeddings"] is True and cfg["dtype"] == "float32"
    assert "quantization_config" not in cfg
    gen = json.loads((smollm2_hf / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    tok_cfg = json.loads((smollm2_hf / "tokenizer_config.json").read_text())
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["pad_token"]) == ("<|im_start|>", "<|im_end|>",
                                                                                  "<|im_end|>")
    jinja = smollm2_hf / "chat_template.jinja"
    template = jinja.read_text() if jinja.is_file() else tok_cfg.get("chat_template", "")
    assert "<|im_start|>" in template and "add_generation_prompt" in template


def test_weights_and_vocabulary_equal_the_gguf(smollm2_hf, converted):
    """The saved tensors are the GGUF's, dequantised (gguf's own dequantize; the tensors that
    need no q/k row permutation), and the tokenizer's ids are the GGUF's token list."""
    import gguf
    from safetensors.torch import load_file

    reader = gguf.GGUFReader(str(smollm2_gguf()))
    tensors = {t.name: t for t in reader.tensors}
    saved = load_file(str(smollm2_hf / "model.safetensors"))
    for theirs, ours in (("token_embd.weight", "model.embed_tokens.weight"),
                         ("output_norm.weight", "model.norm.weight"),
                         ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                         ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight")):
        t = tensors[theirs]
        want = torch.from_numpy(gguf.dequantize(t.data, t.tensor_type).copy()).float()
        assert torch.equal(saved[ours], want.reshape(saved[ours].shape)), theirs
    field = reader.fields["tokenizer.ggml.tokens"]
    vocab = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    _, tok = converted
    assert len(vocab) == 49152 and tok.convert_ids_to_tokens(list(range(49152))) == vocab


def test_greedy_chat_answer(converted):
    model, tok = converted
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(ids["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def write_gguf(path: Path, arch: str) -> Path:
    """A tiny GGUF file: ``arch``'s metadata and one small tensor, no model."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def run_cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """tools/import_gguf.py as users run it; ``prelude`` runs first (in the same process)."""
    code = f"import runpy, sys; {prelude}; sys.argv = ['import_gguf.py', *{list(args)!r}]; " \
           f"runpy.run_path('tools/import_gguf.py', run_name='__main__')"
    cmd = [sys.executable, "-c", code] if prelude else [sys.executable, "tools/import_gguf.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_errors_are_one_line(tmp_path):
    out = tmp_path / "out"
    missing = tmp_path / "nope.gguf"
    assert_one_line_error(run_cli("--gguf", str(missing), "--out", str(out)), "does not exist", str(missing))

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    assert_one_line_error(run_cli("--gguf", str(junk), "--out", str(out)), "not a GGUF file")

    gpt2 = write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    assert_one_line_error(run_cli("--gguf", str(gpt2), "--out", str(out)), "'gpt2'", "llama")

    llama = write_gguf(tmp_path / "llama.gguf", "llama")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run_cli("--gguf", str(llama), "--out", str(out)), "not empty", "remove it")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    # a missing dependency (a None in sys.modules makes find_spec and import treat it as absent)
    r = run_cli("--gguf", str(llama), "--out", str(tmp_path / "new"), prelude="sys.modules['accelerate'] = None")
    assert_one_line_error(r, "accelerate", "pip install 'titan-jepa[gguf]'")
    assert not out.with_name("out.tmp").exists() and not (tmp_path / "new").exists()


def test_dtype_atomic_write_and_generation_config(tmp_path, smollm2_hf, monkeypatch):
    """--dtype bfloat16 on a tiny Llama (the GGUF load is stubbed): weights and config say
    bfloat16, a stale <out>.tmp is replaced, the ids reach generation_config.json."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tool = import_gguf_tool()
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(config)
    tiny.generation_config.pad_token_id = None  # the config's id fills it in
    monkeypatch.setattr(tool, "load_gguf", lambda path: (tiny, AutoTokenizer.from_pretrained(smollm2_hf)))
    out = tmp_path / "hf"
    stale = tmp_path / "hf.tmp"
    stale.mkdir()
    (stale / "junk").write_text("from a killed run")
    tool.main(["--gguf", str(write_gguf(tmp_path / "llama.gguf", "llama")), "--out", str(out),
               "--dtype", "bfloat16"])
    assert not stale.exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    gen = json.loads((out / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 2)
    with safe_open(str(out / "model.safetensors"), framework="pt") as st:
        assert {st.get_tensor(k).dtype for k in st.keys()} == {torch.bfloat16}
        emb = st.get_tensor("model.embed_tokens.weight")
    assert torch.equal(emb, tiny.model.embed_tokens.weight.detach().to(torch.bfloat16))
    back = LlamaForCausalLM.from_pretrained(out)
    assert back.dtype == torch.bfloat16 and back.lm_head.weight is back.model.embed_tokens.weight
