"""AdamW and the learning-rate schedule (warmup, then linear, cosine or WSD decay)."""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from titan_jepa.config import JobConfig


def build_optimizer(model: nn.Module, cfg: JobConfig, device_type: str,
                    heads: nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of the model, then of the objectives' heads."""
    o = cfg.optimizer
    impl = o.implementation
    if impl == "auto":
        # fused kernels exist on CUDA; foreach is the fast path elsewhere
        impl = "fused" if device_type == "cuda" else "foreach"
    kwargs = {"fused": impl == "fused", "foreach": impl == "foreach"}
    # no weight decay on norms (1-D weights), as usual for Llama training
    modules = [model] if heads is None else [model, heads]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # an empty group (LoRA trains 2-D adapters only) breaks DCP's name-keyed optimizer state
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, **kwargs)


def lr_factor(step: int, cfg: JobConfig) -> float:
    """The multiplier of optimizer.lr at optimizer step ``step`` (0-based)."""
    s = cfg.lr_scheduler
    total = cfg.training.steps
    warmup = min(s.warmup_steps, total)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if s.decay_type == "constant":
        return 1.0
    if s.decay_type == "wsd":
        decay_steps = max(1, round(total * s.decay_ratio))
        decay_start = total - decay_steps
        if step < decay_start:
            return 1.0
        progress = (step - decay_start) / decay_steps
    else:
        progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if s.decay_type == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:  # linear, and the linear cool-down of wsd
        shape = 1 - progress
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * shape


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: JobConfig):
    warmup, steps = cfg.lr_scheduler.warmup_steps, cfg.training.steps
    if 0 < steps < warmup:  # a short smoke run of a long config: a warning, not an error
        logging.getLogger("titan_jepa").warning(
            f"lr_scheduler.warmup_steps = {warmup} is beyond training.steps = {steps}: the warmup is "
            f"shortened to {steps} steps (set --lr_scheduler.warmup_steps to choose)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
