"""Greedy decoding with the KV cache: batched + cached == one-by-one without a cache."""

import pytest
import torch

from titan_jepa.eval.generate import greedy_generate, greedy_generate_uncached, next_token_logits
from titan_jepa.models.kv_cache import KVCache, build_kv_caches
from titan_jepa.models.llama import build_model, model_args_for


class _Tok:
    vocab_size = base_vocab_size = 2304
    pad_id = 2000
    eot_id = 2001
    eos_id = 2002
    stop_ids = {2001, 2002}


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    args = model_args_for("debug", n_layers=2, max_seq_len=128, **kw)
    model = build_model(args, device="cpu")
    model.init_weights(seed=seed)
    return model.eval()


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 1990, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("attn", ["sdpa", "flex"])
def test_cache_logits_equal_full_forward(attn):
    """Prefill + token-by-token decoding through the cache give a full forward's logits
    (a flex-backend model decodes through the cache's SDPA path: same weights, same logits)."""
    model = _model(attn_backend=attn)
    seq = torch.randint(0, 1990, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = _model(attn_backend="sdpa")(seq).logits
        caches = build_kv_caches(model, 2, 20)
        pos = torch.arange(20)[None].expand(2, -1)
        parts = [model(seq[:, :7], positions=pos[:, :7], kv_caches=caches).logits]
        for i in range(7, 20):
            parts.append(model(seq[:, i:i + 1], positions=pos[:, i:i + 1], kv_caches=caches).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-5, atol=1e-5)


def test_left_padded_prefill_equals_unpadded():
    model = _model()
    prompts = _prompts([3, 11, 6])
    last = next_token_logits(model, _Tok(), prompts)
    with torch.no_grad():
        for b, p in enumerate(prompts):
            ref = model(torch.tensor([p])).logits[0, -1]
            torch.testing.assert_close(last[b], ref, rtol=1e-5, atol=1e-5)


def test_batched_cached_equals_uncached_one_by_one():
    model = _model()
    tok = _Tok()
    prompts = _prompts([5, 1, 12, 8, 3])
    batched = greedy_generate(model, tok, prompts, max_new_tokens=12)
    for p, out in zip(prompts, batched):
        assert out == greedy_generate_uncached(model, tok, p, max_new_tokens=12)
        assert len(out) == 12  # a random model does not hit the stop ids here
    # a different batch composition changes nothing
    assert greedy_generate(model, tok, prompts[2:4], max_new_tokens=12) == batched[2:4]


def test_stops_at_stop_ids_per_row():
    model = _model()
    tok = _Tok()
    prompts = _prompts([4, 9, 2])
    free = greedy_generate(model, tok, prompts, max_new_tokens=10)
    # make row 1's third generated token a stop token: that row ends there, others go on
    stop = free[1][2]
    outs = greedy_generate(model, tok, prompts, max_new_tokens=10, stop_ids=[stop])
    for f, o in zip(free, outs):
        expected = f[:f.index(stop)] if stop in f else f
        assert o == expected
    assert outs[1] == free[1][:free[1].index(stop)]
    ref = greedy_generate_uncached(model, tok, prompts[1], max_new_tokens=10, stop_ids=[stop])
    assert outs[1] == ref


def test_too_long_is_a_clear_error():
    model = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        greedy_generate(model, _Tok(), _prompts([100]), max_new_tokens=64)


def test_kv_cache_mask_hides_padding():
    cache = KVCache(2, 1, 6, 4, pad_lens=torch.tensor([2, 0]))
    k = torch.zeros(2, 1, 4, 4)
    _, _, mask = cache.update(k, k)
    assert mask.shape == (2, 1, 4, 4)
    m0 = mask[0, 0]
    assert m0[3].tolist() == [False, False, True, True]  # real query: no padding, causal
    assert m0[1].tolist() == [False, True, False, False]  # a pad query sees itself only
    assert mask[1, 0].tolist() == torch.ones(4, 4).tril().bool().tolist()
    _, _, mask = cache.update(k[:, :, :1], k[:, :, :1])
    assert mask[0, 0, 0].tolist() == [False, False, True, True, True]
