"""The model and its attention backends: masks, FlexAttention vs SDPA, hidden states."""

import warnings

import pytest
import torch

from titan_jepa.models.attention import FlexAttention, MaskMeta, SDPAAttention, dense_mask
from titan_jepa.models.llama import build_model, model_args_for


def tiny_model(backend="sdpa", seed=0):
    args = model_args_for("debug", vocab_size=256, max_seq_len=512, attn_backend=backend)
    model = build_model(args, "meta")
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def packed_inputs(seq_len=256, batch=2):
    """Three segments per row (lengths 100, 100, 56); the third also sees the first 60
    tokens of the first (a shared-prefix context)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (batch, seq_len), generator=g)
    seg = torch.zeros(batch, seq_len, dtype=torch.int32)
    seg[:, 100:] = 1
    seg[:, 200:] = 2
    pos = torch.cat([torch.arange(100), torch.arange(100), torch.arange(60, 116)]).expand(batch, -1)
    ctx_seg = torch.full_like(seg, -1)
    ctx_seg[:, 200:] = 0
    ctx_len = torch.zeros_like(seg)
    ctx_len[:, 200:] = 60
    return tokens, pos.contiguous(), seg, ctx_seg, ctx_len


def test_dense_mask_rule():
    _, pos, seg, cs, cl = packed_inputs(seq_len=256, batch=1)
    m = dense_mask(MaskMeta(seg, pos, cs, cl), 256, torch.device("cpu"))[0, 0]
    assert m[150, 120] and not m[150, 90] and not m[120, 150]  # block-causal
    assert m[210, 59] and not m[210, 60] and not m[210, 150]  # context: first 60 of segment 0
    assert m[210, 205] and not m[205, 210]


def test_segments_equal_separate_forwards():
    model = tiny_model()
    tokens, pos, seg, _, _ = packed_inputs()
    pos = torch.cat([torch.arange(100), torch.arange(100), torch.arange(56)]).expand(2, -1)
    with torch.no_grad():
        packed = model(tokens, positions=pos, segment_ids=seg).logits
        for a, b in ((0, 100), (100, 200), (200, 256)):
            alone = model(tokens[:, a:b]).logits
            torch.testing.assert_close(packed[:, a:b], alone, atol=1e-5, rtol=1e-5)


def test_shared_prefix_context_equals_continuation():
    """A segment that sees the first 60 tokens of segment 0 as context, with positions
    continuing from 60, computes what a single sequence prefix+segment would."""
    model = tiny_model()
    tokens, pos, seg, cs, cl = packed_inputs()
    with torch.no_grad():
        packed = model(tokens, positions=pos, segment_ids=seg, context_segment=cs, context_len=cl).logits
        joined = torch.cat([tokens[:, :60], tokens[:, 200:]], dim=1)
        alone = model(joined).logits
    torch.testing.assert_close(packed[:, 200:], alone[:, 60:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_segments", [False, True])
def test_flex_equals_sdpa_on_cpu(with_segments):
    """FlexAttention's BlockMask (forward compiled on CPU) equals the dense SDPA mask."""
    tokens, pos, seg, cs, cl = packed_inputs()
    kwargs = dict(positions=pos, segment_ids=seg, context_segment=cs, context_len=cl) if with_segments else {}
    with torch.no_grad():
        ref = tiny_model("sdpa")(tokens, **kwargs)
        out = tiny_model("flex")(tokens, **kwargs)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)


def test_flex_block_mask_is_sparse():
    _, pos, seg, cs, cl = packed_inputs(seq_len=512, batch=1)
    seg = torch.arange(512, dtype=torch.int32)[None] // 128  # four 128-token segments
    pos = (torch.arange(512) % 128)[None]
    bm = FlexAttention().build_mask(MaskMeta(seg, pos), 1, 512, torch.device("cpu"))
    # 4 diagonal blocks out of 16: the 12 others are skipped
    assert bm.kv_num_blocks.sum().item() + (bm.full_kv_num_blocks.sum().item() if bm.full_kv_num_blocks is not None else 0) == 4


def test_return_hidden_is_final_normed_state():
    model = tiny_model()
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        logits, hidden = model(tokens)
    torch.testing.assert_close(model.output(hidden), logits)
    assert hidden.shape == (2, 32, model.args.dim)


def test_init_is_seeded_by_name():
    a, b, c = tiny_model(seed=0), tiny_model(seed=0), tiny_model(seed=1)
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), n
        if not n.endswith("norm.weight"):
            assert not torch.equal(p, r), n


@pytest.mark.parametrize("tie", [False, True])
def test_init_writes_every_parameter_once(tie):
    """The init rules (by state-dict name) cover every weight of the model: none is left
    as to_empty() made it, none is written twice (tied embeddings: one parameter)."""
    model = build_model(model_args_for("debug", n_layers=2, tie_embeddings=tie), "meta")
    model.to_empty(device="cpu")
    written = []
    model.init_weights(seed=0, write=lambda p, full: written.append(id(p)) or p.copy_(full))
    assert sorted(written) == sorted(id(p) for p in model.parameters())
    assert len(written) == 2 * 9 + 3 - tie


def test_flavor_shapes():
    """Meta's published parameter counts."""
    expect = {"1B": 1.236e9, "3B": 3.213e9, "8B": 8.030e9, "70B": 70.554e9}
    for flavor, n in expect.items():
        assert model_args_for(flavor).num_params() == pytest.approx(n, rel=2e-3), flavor
    assert model_args_for("8B").ffn_hidden_dim == 14336
    assert model_args_for("70B").ffn_hidden_dim == 28672
    assert model_args_for("1B").ffn_hidden_dim == 8192


def test_rope_compiled_real_form_equals_eager_complex_form():
    """apply_rope uses a complex multiply in eager mode and the real form under compile;
    both rotate the same pairs by the same angles, and equal the textbook formula."""
    from titan_jepa.models.llama import apply_rope, rope_tables

    args = model_args_for("debug")
    cos, sin = rope_tables(args)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, args.head_dim, generator=g)
    pos = torch.randint(0, args.max_seq_len, (2, 16), generator=g)
    c, s = cos[pos], sin[pos]
    eager = apply_rope(x, c, s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(apply_rope, fullgraph=True)(x, c, s)
    # inductor warns when it falls back for complex operators: the compiled form avoids them
    assert not [w for w in caught if "complex" in str(w.message)]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c4, s4 = c[:, :, None, :], s[:, :, None, :]
    textbook = torch.stack((x0 * c4 - x1 * s4, x0 * s4 + x1 * c4), -1).flatten(-2)
    assert torch.allclose(eager, textbook, atol=1e-6) and torch.allclose(compiled, textbook, atol=1e-6)


def test_sdpa_gqa_fast_path_equals_expanded_heads():
    """The CPU causal path passes grouped k/v to SDPA (enable_gqa); it equals expanding
    each k/v head over its query group, forward and backward."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 32, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 32, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 32, 16, generator=g, requires_grad=True)
    fast = SDPAAttention().attend(q, k, v, None)
    grads_fast = torch.autograd.grad(fast.square().sum(), (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), is_causal=True)
    grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_fast, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
