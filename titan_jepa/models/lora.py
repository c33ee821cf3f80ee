"""LoRA: low-rank adapters on the linear layers of the transformer blocks.

    [lora]
    enable = true
    rank = 8
    alpha = 16.0
    target_modules = ["wq", "wk", "wv", "wo"]   # any of wq wk wv wo w1 w2 w3

``apply_lora(model, cfg.lora)`` runs on the meta-built model, before parallelisation. Each
target ``nn.Linear`` is replaced by a ``LoRALinear``: an ``nn.Linear`` subclass that keeps
the base weight under its own name (``layers.0.attention.wq.weight``, so checkpoints, the
HF conversion and the TP plan still address it) and adds two children::

    y = x W^T + (alpha / rank) * lora_b(lora_a(dropout(x)))
    lora_a.weight (rank, in)   kaiming-uniform init (as PEFT)
    lora_b.weight (out, rank)  zero init, so the model starts equal to the base model

The base weight (and every other parameter of the model: embeddings, norms, output) is
frozen (``requires_grad = False``); the optimizer only receives the adapters (optim.py
builds it from the parameters that require grad). A LoRALinear initialises its adapters
itself (``LoRALinear.init_weights``, called by ``Transformer.init_weights`` with the same
seeded-by-name draws and ``write`` hook as every other weight), so meta-device init, FSDP2
sharding and TP work as for any other weight;
under TP the adapters follow their base layer (parallel/parallelize.py: a colwise layer's
``lora_b`` is sharded on its output rows and ``lora_a`` replicated; a rowwise layer's
``lora_a`` is sharded on its input columns and ``lora_b`` replicated).

Saving: ``lora_state_dict(model)`` is the adapters alone; ``merge_lora(model)`` folds them
into the base weights in place and turns every LoRALinear back into a plain nn.Linear, and
``merge_lora_state_dict(sd, alpha)`` does the same on a state dict (full tensors), so an
export has exactly the names of the base model (HF conversion works unchanged).
"""

from __future__ import annotations

import math

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from titan_jepa.models.llama import default_write, seeded_generator

LORA_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 dropout: float = 0.0, bias: bool = False, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.lora_a = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_b = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @classmethod
    def from_linear(cls, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> "LoRALinear":
        """A LoRALinear sharing ``base``'s weight (and bias) parameters."""
        w = base.weight
        with torch.device("meta"):  # allocate nothing for the base: its parameters are reused
            new = cls(base.in_features, base.out_features, rank, alpha, dropout,
                      bias=base.bias is not None, dtype=w.dtype)
        new.weight = base.weight
        if base.bias is not None:
            new.bias = base.bias
        new.lora_a = nn.Linear(base.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        new.lora_b = nn.Linear(rank, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        if w.device.type != "meta":
            new.init_weights()
        return new

    @torch.no_grad()
    def init_weights(self, seed: int = 0, prefix: str = "",
                     write: Callable[[torch.Tensor, torch.Tensor], None] = default_write) -> None:
        """Initialise the adapters (not the base weight, which is the model's): A
        kaiming-uniform (as PEFT), B = 0, each drawn whole from the generator seeded by
        (seed, its state-dict name ``<prefix>.lora_a.weight``) and handed to ``write``
        (which keeps the local shard of a sharded parameter). Transformer.init_weights
        calls it with this layer's name as ``prefix``."""
        for child in LORA_KEYS:
            param = getattr(self, child).weight
            full = torch.zeros(param.shape, dtype=torch.float32, device=param.device)
            if child == "lora_a":
                name = f"{prefix}.{child}.weight" if prefix else f"{child}.weight"
                nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=seeded_generator(seed, name, param.device))
            write(param, full.to(param.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(x, self.weight, self.bias)
        return base + self.lora_b(self.lora_a(self.lora_dropout(x))) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """scale * B @ A, the (out, in) update the adapters add to the base weight."""
        return (self.lora_b.weight @ self.lora_a.weight) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def apply_lora(model: nn.Module, cfg) -> nn.Module:
    """Add adapters to ``model`` (a Transformer) as ``cfg`` (the [lora] section) says and
    freeze everything else. No-op when ``cfg.enable`` is false. Call it on the meta-built
    model, before parallelize() (or on a materialised model: adapters then init at once)."""
    if not cfg.enable:
        return model
    targets = set(cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers.values():
        for parent in (block.attention, block.feed_forward):
            for name, child in list(parent.named_children()):
                if name in targets and type(child) is nn.Linear:
                    setattr(parent, name, LoRALinear.from_linear(child, cfg.rank, cfg.alpha, cfg.dropout))
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_name(name))
    return model


def is_lora_name(name: str) -> bool:
    return any(f".{k}." in f".{name}" for k in LORA_KEYS)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors alone (DTensors when the model is parallelised)."""
    return {k: v for k, v in model.state_dict().items() if is_lora_name(k)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight in place and put plain nn.Linear layers
    back (a single-process, unparallelised model)."""
    for fqn, mod in lora_modules(model).items():
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name)
        mod.weight.add_(mod.delta_weight().to(mod.weight.dtype))
        with torch.device("meta"):
            plain = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        plain.weight = mod.weight
        if mod.bias is not None:
            plain.bias = mod.bias
        setattr(parent, child, plain)
    return model


@torch.no_grad()
def merge_lora_state_dict(sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A plain state dict (the base model's names) from one holding adapters (full tensors):
    ``W + alpha / rank * B @ A`` for each adapted weight; rank is read from the shapes."""
    out = {k: v for k, v in sd.items() if not is_lora_name(k)}
    for k in sd:
        if k.endswith(".lora_a.weight"):
            prefix = k[: -len(".lora_a.weight")]
            a, b = sd[k], sd[f"{prefix}.lora_b.weight"]
            w = out[f"{prefix}.weight"]
            delta = (b.float() @ a.float()) * (alpha / a.shape[0])
            out[f"{prefix}.weight"] = (w.float() + delta).to(w.dtype)
    return out
