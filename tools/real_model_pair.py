"""Ours and transformers' model of one real Hugging Face folder, on the same samples in the
layouts each side trains with (shared by bench_smollm2.py and profile_ops.py).

Both models hold the same weights (the folder's, the vocabulary grown to the tokens
LLM-JEPA adds, as training grows it), read the same token ids and compute the same losses:

  ours      the training path: packed rows of ``seq_len`` (best-fit packing of the loader),
            the model's one forward, the objectives of titan_jepa/objectives
  theirs    ``LlamaForCausalLM``, every sample its own row, right-padded to the longest
            (``attention_mask`` marks the padding), the loss computed outside the model

The LLM-JEPA layouts of the reference repository, written with transformers' model:

  3 groups  full, Text+predictor, Code: three batches of rows, each padded to its own
            longest, one forward each (``output_hidden_states``: the last layer, normed)
  2 groups  full; Text+predictor and Code side by side in one row with a 4D mask that keeps
            them apart (positions restart at the Code view); both groups in one forward,
            padded to the longest row of either
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_common import objective_loss, objectives_for, packed_batch  # tools/ is sys.path[0]

from titan_jepa.config import load_config
from titan_jepa.data.batch import IGNORE_INDEX
from titan_jepa.data.chat import ChatSamples
from titan_jepa.data.sources import BadLines
from titan_jepa.data.tokenizer import build_tokenizer
from titan_jepa.data.views import JepaViews
from titan_jepa.objectives.jepa import jepa_distance_sum

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "train_configs" / "smollm2_135m_jepa_synth.toml"
SYNTH = ROOT.parent / "shared" / "data" / "llm_jepa" / "synth_train.jsonl"


@dataclass
class Pair:
    cfg: object  # the JEPA config (separate views, k 1, lambda 1)
    tok: object
    records: list
    ours: torch.nn.Module
    hf: torch.nn.Module
    margs: object

    @property
    def device(self) -> torch.device:
        return self.hf.device


def load_pair(folder: str, n_samples: int, data: Path = SYNTH, *, device="cpu", dtype=torch.float32,
              weights: bool = True, attn_backend: str = "sdpa", n_layers: int | None = None) -> Pair:
    """Ours and transformers' model of ``folder`` (train mode) and the first ``n_samples``
    lines of ``data``. ``weights``: the folder's (read in float32, then cast to ``dtype``);
    False: its config.json's shape (``n_layers`` to shorten it) at random init, the same
    weights on both sides (a GPU run carries the config and tokenizer files, not the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from titan_jepa.checkpoint import hf as hf_convert
    from titan_jepa.checkpoint.weights import read_model_args
    from titan_jepa.config.model import VOCAB_MULTIPLE
    from titan_jepa.models.llama import build_model

    files = ("config.json", "tokenizer.json") + (("model.safetensors",) if weights else ())
    missing = [f for f in files if not (Path(folder) / f).is_file()]
    if missing:
        raise SystemExit(f"error: {folder}/{missing[0]} not found; import the model first: python "
                         f"tools/import_gguf.py --gguf <SmolLM2-135M-Instruct.Q4_1.gguf> --out {folder}")
    cfg = load_config(CONFIG, extra={"tokenizer": {"path": str(Path(folder) / "tokenizer.json")},
                                     "checkpoint": {"initial_load_path": str(folder)}})
    tok = build_tokenizer(cfg)
    if weights:
        from bench_jepa import load_grown  # the folder's weights, vocabulary grown as training grows it

        ours, margs = load_grown(folder, tok)
        hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        hf.resize_token_embeddings(margs.vocab_size, mean_resizing=False)
        with torch.no_grad():  # the grown rows: ours (tied: the head too)
            hf.get_input_embeddings().weight.copy_(ours.tok_embeddings.weight)
    else:
        margs = read_model_args("hf", Path(folder))
        margs = replace(margs, vocab_size=max(margs.vocab_size, -(-tok.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE),
                        n_layers=n_layers or margs.n_layers)
        ours = build_model(margs, "meta")
        ours.to_empty(device="cpu")
        ours.init_weights(0)
        skip = ("architectures", "model_type", "torch_dtype", "dtype")
        config = LlamaConfig(**{k: v for k, v in hf_convert.hf_config_dict(margs).items() if k not in skip})
        config._attn_implementation = "sdpa"
        hf = LlamaForCausalLM(config)
        hf.load_state_dict(hf_convert.to_hf_state_dict(ours.state_dict(), margs), strict=False)
        if margs.tie_embeddings:
            hf.tie_weights()
    hf.config.use_cache = False
    if attn_backend != "sdpa":
        from titan_jepa.models.attention import build_attention_backend

        ours.backend = build_attention_backend(attn_backend)
        for layer in ours.layers.values():
            layer.attention.backend = ours.backend
    margs = replace(margs, attn_backend=attn_backend)
    ours.to(device, dtype).init_buffers(device)  # RoPE tables stay float32
    hf.to(device, dtype)
    records = [json.loads(line) for line in data.read_text().splitlines()[:n_samples]]
    return Pair(cfg, tok, records, ours.train(), hf.train(), margs)


def add_pair_args(ap) -> None:
    """The command-line options of the tools that load a pair (bench_smollm2, profile_ops)."""
    ap.add_argument("--hf-folder", default="models/SmolLM2-135M-Instruct")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def pair_from_args(a) -> Pair:
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    return load_pair(a.hf_folder, a.samples)


def ntp_cfg(cfg):
    return replace(cfg, jepa=replace(cfg.jepa, enable=False))


# ---- ours --------------------------------------------------------------------------------
def ours_step(pair: Pair, cfg, jepa: bool, seq_len: int = 512):
    """(step closure: forward + loss + backward of the training path, its batch)."""
    batch = packed_batch(pair.records, cfg, pair.tok, seq_len, jepa).to(pair.device)
    objective = objectives_for(cfg)

    def step():
        pair.ours.zero_grad(set_to_none=True)
        loss = objective_loss(pair.ours, objective, batch)
        loss.backward()
        return loss.detach()

    return step, batch


# ---- theirs ------------------------------------------------------------------------------
def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), value, dtype=torch.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s)
    return out


def _encoded(pair: Pair, cfg):
    """Per sample: (full tokens, full labels, Text view, Code view, index of the predictor's
    embedding in Text, index of Code's embedding), as our views make them."""
    bad = BadLines("skip")
    views = JepaViews(ChatSamples(pair.tok, cfg.data.loss_on, 10**6, bad), cfg.jepa, pair.tok, 10**6, 0, 0, bad)
    out = []
    for r in pair.records:
        s = views(r, "bench")
        full, text, code = (seg.ids for seg in s.segments)
        pred, target = s.marks["jepa"]
        out.append((full, s.segments[0].labels, text, code, pred - len(full), target - len(full) - len(text)))
    return out


def _hf_ntp(hf, tokens, labels, attn):
    """Sum of next-token losses and the normed last hidden states (our labels are shifted)."""
    out = hf(input_ids=tokens, attention_mask=attn, output_hidden_states=True)
    ce = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                         reduction="sum")
    return ce, out.hidden_states[-1]


def hf_ntp_step(pair: Pair, cfg):
    enc = _encoded(pair, cfg)
    tokens, labels = _pad([e[0] for e in enc], pair.tok.pad_id), _pad([e[1] for e in enc], IGNORE_INDEX)
    attn = _pad([[1] * len(e[0]) for e in enc], 0)
    n = int((labels != IGNORE_INDEX).sum())
    tokens, labels, attn = (t.to(pair.device) for t in (tokens, labels, attn))

    def step():
        pair.hf.zero_grad(set_to_none=True)
        ce, _ = _hf_ntp(pair.hf, tokens, labels, attn)
        loss = ce / n
        loss.backward()
        return loss.detach()

    return step, tuple(tokens.shape)


def hf_reference_step(pair: Pair, cfg, groups: int):
    """The reference's LLM-JEPA step with transformers' model: ``groups`` 3 or 2 (above).
    The loss: next-token mean over the full sequences' targets + lambda x the mean cosine
    distance of Pred(Enc(Text)) and Enc(Code) (k predictor tokens in Text)."""
    enc = _encoded(pair, cfg)
    pad, n = pair.tok.pad_id, len(enc)
    full, labels = _pad([e[0] for e in enc], pad), _pad([e[1] for e in enc], IGNORE_INDEX)
    full_attn = _pad([[1] * len(e[0]) for e in enc], 0)
    n_tok = int((labels != IGNORE_INDEX).sum())
    pred_at, code_at = torch.tensor([e[4] for e in enc]), torch.tensor([e[5] for e in enc])
    lam, idx = cfg.jepa.lambda_, torch.arange(n, device=pair.device)
    full, labels, full_attn, pred_at, code_at = (t.to(pair.device) for t in (full, labels, full_attn, pred_at, code_at))
    if groups == 3:
        text, code = _pad([e[2] for e in enc], pad), _pad([e[3] for e in enc], pad)
        text_attn, code_attn = _pad([[1] * len(e[2]) for e in enc], 0), _pad([[1] * len(e[3]) for e in enc], 0)
        text, code, text_attn, code_attn = (t.to(pair.device) for t in (text, code, text_attn, code_attn))
        shape = (full.shape[0] + text.shape[0] + code.shape[0], f"{full.shape[1]}/{text.shape[1]}/{code.shape[1]}")

        def step():
            pair.hf.zero_grad(set_to_none=True)
            ce, _ = _hf_ntp(pair.hf, full, labels, full_attn)
            h_text = pair.hf(input_ids=text, attention_mask=text_attn, output_hidden_states=True).hidden_states[-1]
            h_code = pair.hf(input_ids=code, attention_mask=code_attn, output_hidden_states=True).hidden_states[-1]
            jepa = jepa_distance_sum(h_text[idx, pred_at], h_code[idx, code_at], cfg.jepa.distance)
            loss = ce / n_tok + lam * jepa / n
            loss.backward()
            return loss.detach()

        return step, shape
    # two groups in one forward: full rows, then Text|Code rows under a 4D mask
    pairs = [e[2] + e[3] for e in enc]
    width = max(full.shape[1], max(map(len, pairs)))
    tokens = torch.full((2 * n, width), pad, dtype=torch.int64)
    pos = torch.zeros((2 * n, width), dtype=torch.int64)
    seg = torch.full((2 * n, width), -1, dtype=torch.int64)  # -1: padding
    for i, e in enumerate(enc):
        tokens[i, :len(e[0])] = torch.tensor(e[0])
        pos[i, :len(e[0])], seg[i, :len(e[0])] = torch.arange(len(e[0])), 0
        lt, lc = len(e[2]), len(e[3])
        tokens[n + i, :lt + lc] = torch.tensor(pairs[i])
        pos[n + i, :lt], pos[n + i, lt:lt + lc] = torch.arange(lt), torch.arange(lc)
        seg[n + i, :lt], seg[n + i, lt:lt + lc] = 0, 1
    q = torch.arange(width)
    allowed = (seg[:, :, None] == seg[:, None, :]) & (q[None, :, None] >= q[None, None, :]) & (seg[:, None, :] >= 0)
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # a padding query sees itself (no empty row)
    mask4d = allowed[:, None]
    code_in_row = torch.tensor([len(e[2]) for e in enc], device=pair.device) + code_at
    wide_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.int64, device=pair.device)
    wide_labels[:, :labels.shape[1]] = labels
    tokens, mask4d, pos = (t.to(pair.device) for t in (tokens, mask4d, pos))

    def step():
        pair.hf.zero_grad(set_to_none=True)
        out = pair.hf(input_ids=tokens, attention_mask=mask4d, position_ids=pos, output_hidden_states=True)
        ce = F.cross_entropy(out.logits[:n].flatten(0, 1).float(), wide_labels.flatten(),
                             ignore_index=IGNORE_INDEX, reduction="sum")
        h = out.hidden_states[-1]
        jepa = jepa_distance_sum(h[n + idx, pred_at], h[n + idx, code_in_row], cfg.jepa.distance)
        loss = ce / n_tok + lam * jepa / n
        loss.backward()
        return loss.detach()

    return step, (2 * n, width)
