"""Batched greedy decoding with a KV cache (and a slow, cache-free reference).

    outs = greedy_generate(model, tokenizer, [prompt_ids, ...], max_new_tokens=128)

Prompts of a batch are left-padded to one length; each prompt's rotary positions start at 0
at its first real token and the cache's mask hides the padding (models/kv_cache.py), so a
prompt decodes to the same tokens whatever batch it is in. A row stops at the first stop
token (default: the tokenizer's ``stop_ids``: end of turn, eos and generation_config.json's
eos ids), which is not returned, or after ``max_new_tokens``; the batch stops when every
row has stopped. Argmax runs over the tokenizer's own ids only (a model's vocabulary may be
padded beyond them, and the tokens this stack added are never generated).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from titan_jepa.models.kv_cache import build_kv_caches


def default_stop_ids(tokenizer) -> set[int]:
    return set(tokenizer.stop_ids)


def _vocab_limit(model, tokenizer) -> int:
    """Argmax runs over ids below this: the tokenizer's own vocabulary, without the rows a
    model pads beyond it and the tokens this stack added (predictors, mask, pad)."""
    n = model.args.vocab_size
    return min(n, tokenizer.base_vocab_size) if tokenizer is not None else n


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device):
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    if (lens == 0).any():
        raise ValueError("an empty prompt cannot be decoded (it needs at least one token, e.g. BOS)")
    width = int(lens.max())
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
    pad_lens = width - lens
    positions = (torch.arange(width)[None, :] - pad_lens[:, None]).clamp(min=0)
    return tokens.to(device), positions.to(device), pad_lens, lens


def _check_length(model, needed: int) -> None:
    if needed > model.args.max_seq_len:
        raise ValueError(f"prompt + new tokens = {needed} tokens exceeds the model's max_seq_len "
                         f"{model.args.max_seq_len}; lower max_new_tokens or shorten the prompt")


@torch.no_grad()
def prefill(model, tokenizer, prompts_ids: Sequence[Sequence[int]], extra_len: int = 0):
    """Run the left-padded prompts through the model once: (last-position logits (B, V),
    caches, next positions (B,)). The caches have room for ``extra_len`` more tokens."""
    device = model.tok_embeddings.weight.device
    pad_id = tokenizer.pad_id if tokenizer is not None else 0
    tokens, positions, pad_lens, lens = _left_pad(prompts_ids, pad_id, device)
    _check_length(model, int(lens.max()) + extra_len)
    caches = build_kv_caches(model, len(prompts_ids), tokens.shape[1] + extra_len, pad_lens)
    logits = model(tokens, positions=positions, kv_caches=caches, last_logits_only=True).logits[:, -1]
    return logits, caches, lens.to(device)


@torch.no_grad()
def next_token_logits(model, tokenizer, prompts_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, V) float32 logits of the token after each (whole, untruncated) prompt."""
    logits, _, _ = prefill(model, tokenizer, prompts_ids)
    return logits.float()


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts_ids: Sequence[Sequence[int]], max_new_tokens: int = 128,
                    stop_ids: Iterable[int] | None = None) -> list[list[int]]:
    """Greedy continuations of a batch of prompts (token ids), stop tokens excluded."""
    stop = set(default_stop_ids(tokenizer) if stop_ids is None else stop_ids)
    if not prompts_ids or max_new_tokens <= 0:
        return [[] for _ in prompts_ids]
    limit = _vocab_limit(model, tokenizer)
    was_training = model.training
    model.eval()
    try:
        logits, caches, positions = prefill(model, tokenizer, prompts_ids, extra_len=max_new_tokens)
        stop_t = torch.tensor(sorted(stop), dtype=torch.long, device=logits.device)
        batch = len(prompts_ids)
        done = torch.zeros(batch, dtype=torch.bool, device=logits.device)
        steps = []
        for step in range(max_new_tokens):
            nxt = logits[:, :limit].argmax(-1)
            done = done | torch.isin(nxt, stop_t)
            steps.append(torch.where(done, -1, nxt))  # -1: this row has stopped
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            logits = model(nxt[:, None], positions=positions[:, None], kv_caches=caches,
                           last_logits_only=True).logits[:, -1]
            positions = positions + 1
    finally:
        model.train(was_training)
    table = torch.stack(steps, 1).tolist()
    out = []
    for row in table:
        ids = []
        for t in row:
            if t < 0:
                break
            ids.append(t)
        out.append(ids)
    return out


@torch.no_grad()
def greedy_generate_uncached(model, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 128,
                             stop_ids: Iterable[int] | None = None) -> list[int]:
    """Reference: one prompt, a full forward over the whole sequence for every new token."""
    stop = set(default_stop_ids(tokenizer) if stop_ids is None else stop_ids)
    limit = _vocab_limit(model, tokenizer)
    device = model.tok_embeddings.weight.device
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids], device=device)).logits[0, -1]
        nxt = int(logits[:limit].argmax())
        if nxt in stop:
            break
        out.append(nxt)
        ids.append(nxt)
    return out
