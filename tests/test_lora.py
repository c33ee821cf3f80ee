"""LoRA: only adapters train, merging is exact, and FSDP / TP runs equal one process."""

import pytest
import torch

from titan_jepa.config import ConfigError, Lora, load_config
from titan_jepa.models.lora import (
    LoRALinear,
    apply_lora,
    lora_state_dict,
    merge_lora,
    merge_lora_state_dict,
)
from titan_jepa.models.llama import build_model, model_args_for
from titan_jepa.optim import build_optimizer

# the FLOP counter of the first step costs seconds on CPU; these tests do not need it
FAST_METRICS = {"flop_counter_steps": 0}

ALL = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def _lora_model(targets=ALL, device="meta", seed=0):
    model = build_model(model_args_for("debug", n_layers=2, max_seq_len=64), device=device)
    apply_lora(model, Lora(enable=True, rank=4, alpha=8.0, target_modules=list(targets)))
    if device == "meta":
        model.to_empty(device="cpu")
        model.init_weights(seed=seed)
    return model


def test_apply_lora_names_init_and_freezing():
    model = _lora_model(["wq", "wo", "w2"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_a." in n or ".lora_b." in n for n in names)
    assert "layers.0.attention.wq.weight" in dict(model.named_parameters())  # base name kept
    assert isinstance(model.layers["1"].feed_forward.w2, LoRALinear)
    assert type(model.layers["1"].feed_forward.w1) is torch.nn.Linear
    for n, p in model.named_parameters():
        if n.endswith("lora_b.weight"):
            assert torch.count_nonzero(p) == 0
        if n.endswith("lora_a.weight"):
            assert p.std() > 0
    assert set(lora_state_dict(model)) == {n for n in names}
    # B = 0: the model starts as the base model
    base = build_model(model.args, device="meta")
    base.to_empty(device="cpu")
    base.init_weights(seed=0)
    tokens = torch.randint(0, 2000, (2, 16))
    torch.testing.assert_close(model(tokens).logits, base(tokens).logits)


def test_lora_linear_owns_its_init():
    """LoRALinear.init_weights draws its adapters as before the move out of the model's init
    (A: kaiming-uniform from the generator seeded by (seed, name), B = 0), and
    Transformer.init_weights hands every parameter, adapters included, to ``write`` once."""
    import math
    import zlib

    from titan_jepa.models.lora import lora_modules

    model = _lora_model(["wq", "w2"], seed=3)
    layers = lora_modules(model)
    assert sorted(layers) == [f"layers.{i}.{m}" for i in (0, 1) for m in ("attention.wq", "feed_forward.w2")]
    for name, layer in layers.items():
        want = torch.empty(layer.lora_a.weight.shape)
        gen = torch.Generator().manual_seed((3 * 1_000_003 + zlib.crc32(f"{name}.lora_a.weight".encode())) % 2**63)
        torch.nn.init.kaiming_uniform_(want, a=math.sqrt(5), generator=gen)
        assert torch.equal(layer.lora_a.weight, want), name
        assert torch.count_nonzero(layer.lora_b.weight) == 0
        with torch.no_grad():
            layer.lora_a.weight.zero_()
            layer.lora_b.weight.fill_(1.0)
        layer.init_weights(seed=3, prefix=name)  # its own reset gives the same draw
        assert torch.equal(layer.lora_a.weight, want) and torch.count_nonzero(layer.lora_b.weight) == 0
    written = []
    model.init_weights(seed=3, write=lambda p, full: written.append(id(p)) or p.copy_(full))
    assert sorted(written) == sorted(id(p) for p in model.parameters())  # each exactly once


def test_base_frozen_only_adapters_train():
    model = _lora_model()
    cfg = load_config(extra={"optimizer": {"lr": 1e-2}})
    opt = build_optimizer(model, cfg, "cpu")
    assert sum(len(g["params"]) for g in opt.param_groups) == len(lora_state_dict(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 2000, (2, 17))
    losses = []
    for _ in range(3):
        logits = model(tokens[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (".lora_" in n), n
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert not torch.equal(p, before[n]) or n.endswith("lora_a.weight"), n
        else:
            assert torch.equal(p, before[n]), n


def test_merged_equals_adapters():
    model = _lora_model()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b.weight"):
                p.normal_(0, 0.05)
    tokens = torch.randint(0, 2000, (2, 16))
    with torch.no_grad():
        out = model(tokens).logits
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        merged_sd = merge_lora_state_dict(sd, alpha=8.0)
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert set(model.state_dict()) == set(merged_sd)
        torch.testing.assert_close(model(tokens).logits, out, rtol=1e-5, atol=1e-5)
        plain = build_model(model.args, device="cpu")
        plain.load_state_dict(merged_sd)
        torch.testing.assert_close(plain(tokens).logits, out, rtol=1e-5, atol=1e-5)


def test_apply_lora_on_materialised_model_and_errors():
    model = build_model(model_args_for("debug", n_layers=1, max_seq_len=64), device="cpu")
    w = model.layers["0"].attention.wq.weight
    apply_lora(model, Lora(enable=True))
    assert model.layers["0"].attention.wq.weight is w  # the base parameter is reused
    assert torch.count_nonzero(model.layers["0"].attention.wq.lora_b.weight) == 0
    # the config loader checks [lora] (apply_lora trusts it)
    with pytest.raises(ConfigError, match=r"lora.target_modules = 'wx' is not one of wq, wk, wv, wo, w1, w2, w3"):
        load_config(extra={"lora": {"enable": True, "target_modules": ["wq", "wx"]}})
    with pytest.raises(ConfigError, match=r"lora.target_modules is empty"):
        load_config(extra={"lora": {"enable": True, "target_modules": []}})
    with pytest.raises(ConfigError, match=r"lora.rank = 0 must be positive"):
        load_config(extra={"lora": {"enable": True, "rank": 0}})


# LoRA on FSDP 2, TP 2 and PP 2 against one process: tests/test_golden.py
