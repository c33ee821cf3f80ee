"""A real pretrained model through the stack: SmolLM2-135M-Instruct (Llama architecture,
ChatML template, GPT-2-style byte BPE), imported from its GGUF (tests/real_model.py).

Our logits equal transformers' on the same folder; our KV-cache greedy decoding and the
eval's predictions equal transformers' ``generate`` token for token with the model's own
generation prompt; an export reloads in transformers with the same logits; the LLM-JEPA
tokens that SmolLM2's vocabulary lacks are added, grow the embedding (new rows = the mean)
and survive the export with the tokenizer files; Enc lands before ``<|im_end|>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from titan_jepa.checkpoint import export_model
from titan_jepa.config import load_config
from titan_jepa.data.chat_template import generation_prompt
from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.tokenizer import HFTokenizer, build_tokenizer
from titan_jepa.eval.generate import greedy_generate
from titan_jepa.eval.run import evaluate
from titan_jepa.checkpoint.hf import save_hf_checkpoint
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import build_model
from titan_jepa.checkpoint.weights import load_hf, load_model

from helpers import ROOT

SYNTH = ROOT.parent / "shared" / "data" / "llm_jepa" / "synth_test.jsonl"
IM_END = 2


def synth_rows(n: int) -> list[dict]:
    if SYNTH.is_file():
        lines = SYNTH.read_text().splitlines()[:n]
        return [json.loads(x) for x in lines]
    # without ../shared: synth-like conversations of the same form
    return [{"messages": [{"role": "system", "content": "Convert natural language to regular expression."},
                          {"role": "user", "content": f"lines with the string 'w{i}' before a number"},
                          {"role": "assistant", "content": f".*w{i}.*[0-9].*"}]} for i in range(n)]


def tok_cfg(folder: Path, **sections):
    return load_config(extra={"tokenizer": {"kind": "hf", "path": str(folder / "tokenizer.json")},
                              "data": {"kind": "chat"}, **sections})


@pytest.fixture(scope="module")
def models(smollm2_hf):
    """(ours, transformers', tokenizer) on the same HF folder, fp32, eval mode."""
    cfg = tok_cfg(smollm2_hf)
    tok = build_tokenizer(cfg.tokenizer)
    ours, _ = load_model(cfg, smollm2_hf, tok.vocab_size, torch.device("cpu"), torch.float32)
    theirs = LlamaForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).eval()
    return ours, theirs, tok


def test_shape_and_special_tokens(models):
    ours, _, tok = models
    a = ours.args
    assert (a.n_layers, a.dim, a.n_heads, a.n_kv_heads, a.vocab_size, a.tie_embeddings, a.rope_theta) == \
        (30, 576, 9, 3, 49152, True, 1e5)
    # the model's own choices (tokenizer_config.json / generation_config.json), not Llama-3's
    assert (tok.bos_id, tok.eos_id, tok.eot_id, tok.pad_id) == (1, IM_END, IM_END, IM_END)
    assert tok.stop_ids == {IM_END} and tok.pad_in_text() and type(tok.hf_chat_template).__name__ == "HFChatTemplate"


def test_logits_equal_transformers(models):
    ours, theirs, tok = models
    prompts = [generation_prompt(tok, r["messages"]) for r in synth_rows(8)]
    worst = 0.0
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            worst = max(worst, (ours(ids).logits - theirs(ids).logits).abs().max().item())
    assert worst <= 1e-4, worst


def test_greedy_generation_and_eval_equal_transformers(models):
    ours, theirs, tok = models
    rows = synth_rows(20)
    prompts = [generation_prompt(tok, r["messages"]) for r in rows]
    ref_tok = AutoTokenizer.from_pretrained(theirs.name_or_path)
    for r, p in zip(rows, prompts):  # the generation prompt comes from the model's template
        hf_ids = ref_tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True)
        assert list(hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids) == p
    # transformers' greedy generate, left-padded batches (its attention mask and positions)
    expect = []
    with torch.no_grad():
        for i in range(0, len(prompts), 10):
            part = prompts[i:i + 10]
            width = max(len(p) for p in part)
            ids = torch.tensor([[IM_END] * (width - len(p)) + p for p in part])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
            out = theirs.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                                  eos_token_id=IM_END, pad_token_id=IM_END)[:, width:].tolist()
            expect += [o[:o.index(IM_END)] if IM_END in o else o for o in out]
    # the eval's path (KV-cache greedy_generate in batches of 7, then decode and score)
    results = evaluate(ours, tok, rows, "exact", batch_size=7, max_new_tokens=16, progress=False)
    assert [r["prediction"] for r in results["predictions"]] == [ref_tok.decode(e) for e in expect]
    # token for token, through the batched KV-cache decoder directly
    assert greedy_generate(ours, tok, prompts, max_new_tokens=16) == expect


def test_export_reloads_in_transformers_with_equal_logits(models, tmp_path):
    ours, _, _ = models
    save_hf_checkpoint(ours.state_dict(), ours.args, tmp_path / "hf")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ids = torch.tensor([list(range(100, 164))])
    with torch.no_grad():
        assert (ours(ids).logits - back(ids).logits).abs().max().item() <= 1e-4


def test_jepa_tokens_are_added_and_the_vocabulary_grows(smollm2_hf, tmp_path):
    cfg = tok_cfg(smollm2_hf, jepa={"enable": True, "k": 2},
                  checkpoint={"initial_load_path": str(smollm2_hf), "initial_load_format": "hf"})
    tok = build_tokenizer(cfg)
    assert tok.added_tokens == {"<|predictor_1|>": 49152, "<|predictor_2|>": 49153, "<|pad|>": 49154}
    assert tok.predictor_token_ids(2) == [49152, 49153] and tok.pad_id == 49154 and not tok.pad_in_text()
    assert tok.encode("<|predictor_1|>") != [49152]  # in text it stays text
    args = model_args_from_config(cfg, tok.vocab_size, len(tok.added_tokens))
    assert args.vocab_size == 49216  # rounded up to a multiple of 64
    model = build_model(args, device="meta")
    model.to_empty(device="cpu")
    model.init_buffers("cpu")
    load_hf(model, smollm2_hf, "test", grow=True)
    emb = model.tok_embeddings.weight.detach()
    base = LlamaForCausalLM.from_pretrained(smollm2_hf, dtype=torch.float32).model.embed_tokens.weight.detach()
    assert torch.equal(emb[:49152], base)
    assert torch.allclose(emb[49152:], base.double().mean(0).float().expand(64, -1), atol=0, rtol=0)
    assert model.output.weight is model.tok_embeddings.weight  # still tied
    # the export carries the tokenizer with the added tokens; transformers reloads both
    step = export_model(model, tmp_path / "ckpt", 1, tokens=tok.tokens_record())
    assert json.loads((step / "tokens.json").read_text())["added"] == tok.added_tokens
    out = tmp_path / "hf_out"
    proc = subprocess.run([sys.executable, "tools/convert_hf.py", "--to-hf", "--src", str(step), "--dst", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf_tok.convert_tokens_to_ids(["<|predictor_1|>", "<|predictor_2|>", "<|pad|>"]) == [49152, 49153, 49154]
    assert hf_tok.pad_token == "<|pad|>" and len(hf_tok) == 49155
    assert hf_tok.apply_chat_template(synth_rows(1)[0]["messages"], tokenize=False).startswith("<|im_start|>system")
    back = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert back.config.vocab_size == 49216 and back.config.pad_token_id == 49154
    ids = torch.tensor([[1, 4093, 198, 49152, 49153, 2, 198]])
    with torch.no_grad():
        assert (model.eval()(ids).logits - back(ids).logits).abs().max().item() <= 1e-4
    # and our tokenizer reads the exported folder back with the same ids
    again = HFTokenizer(out / "tokenizer.json")
    assert {n: again.special_tokens[n] for n in tok.added_tokens} == tok.added_tokens and again.pad_id == 49154


def test_enc_lands_before_im_end_on_real_encodings(smollm2_hf, tmp_path):
    """Separate views: Pred at the Text view's last predictor token, Enc(Code) at the Code
    view's last content token; both are followed by <|im_end|> (the reference's last_token
    for ChatML is -3: "... content <|im_end|> \\n")."""
    data = tmp_path / "synth.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in synth_rows(16)) + "\n")
    for k in (0, 1):
        cfg = tok_cfg(smollm2_hf, jepa={"enable": True, "k": k},
                      data={"kind": "chat", "path": str(data), "num_epochs": 1},
                      training={"local_batch_size": 2, "seq_len": 512})
        tok = build_tokenizer(cfg)
        batch = next(build_dataloader(cfg, tok))
        p, t = batch.record("jepa").pred, batch.record("jepa").target
        assert p.shape[0] > 0
        for (pr, pc), (tr, tc), (row, *_rest) in zip(p.tolist(), t.tolist(), batch.samples.table.tolist()):
            assert batch.tokens[pr, pc + 1] == IM_END and batch.tokens[tr, tc + 1] == IM_END
            assert batch.tokens[tr, tc + 2] == 198  # "\n" after <|im_end|>
            if k:
                assert batch.tokens[pr, pc] == tok.predictor_token_ids(1)[0]
        # the Code view's last content token is the answer's last token
        sample = batch.samples
        code_last = [ids[-1] for ids in sample.code_ids]
        assert [batch.tokens[r, c].item() for r, c in t.tolist()] == code_last[:t.shape[0]]
        # the reference's ChatML offset (-3 from the view's end) lands on the same tokens
        ref_cfg = tok_cfg(smollm2_hf, jepa={"enable": True, "k": k, "last_token": -3},
                          data={"kind": "chat", "path": str(data), "num_epochs": 1},
                          training={"local_batch_size": 2, "seq_len": 512})
        ref = next(build_dataloader(ref_cfg, build_tokenizer(ref_cfg)))
        assert torch.equal(ref.record("jepa").pred, p) and torch.equal(ref.record("jepa").target, t)


def test_template_sources_and_a_template_without_generation_prompt(smollm2_hf, tmp_path):
    """chat_template.jinja beside the tokenizer (transformers 5's place), the GGUF's own
    tokenizer.chat_template and a tokenizer_config.json field give the same template; a
    template that renders no generation prompt stops the eval with one line before any model
    is loaded."""
    from real_model import smollm2_gguf

    rows = synth_rows(3)
    base = build_tokenizer(tok_cfg(smollm2_hf))  # chat_template.jinja, found by "auto"
    want = [generation_prompt(base, r["messages"]) for r in rows]
    from_gguf = build_tokenizer(load_config(extra={"tokenizer": {
        "kind": "hf", "path": str(smollm2_hf / "tokenizer.json"), "chat_template": "hf",
        "chat_template_path": str(smollm2_gguf())}}).tokenizer)
    assert [generation_prompt(from_gguf, r["messages"]) for r in rows] == want
    folder = tmp_path / "field"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((smollm2_hf / "tokenizer.json").read_bytes())
    conf = json.loads((smollm2_hf / "tokenizer_config.json").read_text())
    conf["chat_template"] = (smollm2_hf / "chat_template.jinja").read_text()
    (folder / "tokenizer_config.json").write_text(json.dumps(conf))
    from_field = build_tokenizer(tok_cfg(folder).tokenizer)
    assert [generation_prompt(from_field, r["messages"]) for r in rows] == want
    # no generation prompt: ChatML without its add_generation_prompt branch
    plain = (smollm2_hf / "chat_template.jinja").read_text()
    plain = plain[:plain.index("{% if add_generation_prompt %}")]
    (folder / "chat_template.jinja").write_text(plain)
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    proc = subprocess.run([sys.executable, "-m", "titan_jepa.eval", "--checkpoint", str(smollm2_hf),
                           "--tokenizer", str(folder / "tokenizer.json"), "--data", str(data)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "renders no generation prompt" in proc.stderr


def test_shared_prefix_is_another_objective_than_separate_views(models, smollm2_hf, tmp_path):
    """On the real weights and the same samples, the LLM-JEPA loss of shared-prefix views is
    not the separate views' (so the comparison of docs/results.md uses separate views, the
    reference's): the shared-prefix Text embedding is read inside the full sequence, after
    the system prompt and with the full sequence's positions, where a separate Text view
    starts from SmolLM2's default system prompt and its own positions."""
    from titan_jepa.objectives.jepa import jepa_distance_sum, view_embeddings

    ours, _, _ = models
    data = tmp_path / "synth.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in synth_rows(8)) + "\n")
    losses = {}
    for views in ("separate", "shared_prefix"):
        cfg = tok_cfg(smollm2_hf, jepa={"enable": True, "k": 0, "views": views},
                      data={"kind": "chat", "path": str(data), "num_epochs": 1},
                      training={"local_batch_size": 4, "seq_len": 512})
        cfg.tokenizer.add_tokens = "never"  # k = 0 needs no new token; the model keeps its vocabulary
        batch = next(build_dataloader(cfg, build_tokenizer(cfg)))
        assert batch.record("jepa").pred.shape[0] == 8
        with torch.no_grad():
            _, hidden = ours(batch.tokens, positions=batch.positions, segment_ids=batch.segment_ids,
                             context_segment=batch.context_segment, context_len=batch.context_len)
        pred, target = view_embeddings(hidden, batch.record("jepa").pred, batch.record("jepa").target)
        losses[views] = jepa_distance_sum(pred, target, "cosine").item() / 8
    print(f"JEPA cosine loss on 8 synth samples, k = 0: {losses}")
    # (measured: about 0.39 vs 0.40) far beyond the 1e-5 an equal objective would give
    assert abs(losses["separate"] - losses["shared_prefix"]) > 1e-3, losses


def test_shared_view_prefix_gives_the_same_loss_and_gradients(models, smollm2_hf, tmp_path):
    """data.share_prefix on the real weights: every separate view starts with SmolLM2's
    default system prompt (21 tokens) and its role header; read once a row, the LLM-JEPA step
    runs about 0.7x the tokens with the same loss and gradients as running every view whole."""
    from titan_jepa.objectives import build_objectives
    from titan_jepa.objectives.base import Objectives
    from titan_jepa.parallel.schedule import LocalRunner

    ours, _, _ = models
    data = tmp_path / "synth.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in synth_rows(8)) + "\n")
    out = {}
    try:
        ours.requires_grad_(True)
        for share in (0, 8):
            cfg = tok_cfg(smollm2_hf, jepa={"enable": True, "k": 0},
                          data={"kind": "chat", "path": str(data), "num_epochs": 1, "loss_on": "all",
                                "pack_buffer": 64, "share_prefix": share},
                          training={"local_batch_size": 4, "seq_len": 512})
            cfg.tokenizer.add_tokens = "never"
            batch = next(build_dataloader(cfg, build_tokenizer(cfg)))
            objectives, counts = Objectives(build_objectives(cfg)), batch.counts.vector()
            ours.zero_grad(set_to_none=True)
            (result,) = LocalRunner(ours, head_on_targets=True, drop_padding=True).run(
                [batch], lambda o, mb: (objectives(o, mb, counts).loss, objectives(o, mb, counts)))
            out[share] = (batch, result.sums, [p.grad.clone() for p in ours.parameters()])
    finally:
        ours.zero_grad(set_to_none=True)
        ours.requires_grad_(False)
    (b0, s0, g0), (b1, s1, g1) = out[0], out[8]
    assert torch.equal(b0.samples.table[:, 0], b1.samples.table[:, 0])  # the same samples in each row
    run0, run1 = b0.tokens_at.numel(), b1.tokens_at.numel()
    print(f"tokens run: {run0} whole views, {run1} with the shared prefix read once a row")
    assert run1 < 0.8 * run0 and b1.counts.full_tokens == b0.counts.full_tokens
    assert torch.allclose(s1, s0, rtol=1e-6, atol=0), (s0, s1)  # next-token and JEPA sums
    worst = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(g0, g1))
    print(f"largest gradient difference (relative to the tensor's largest entry): {worst:.1e}")
    assert worst < 1e-4
