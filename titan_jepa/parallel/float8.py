"""Float8 training of the transformer blocks' linear layers through torchao.

``[float8] enable = true`` swaps every ``nn.Linear`` inside ``model.layers`` for torchao's
``Float8Linear`` (matmuls in float8 with dynamic scaling, weights and optimizer state kept in
high precision). The output projection stays in high precision, as in torchtitan: the
logits are sensitive to quantisation and its vocab-sized shape gains little.

It is applied before tensor parallelism and FSDP (see parallelize.py), under the plain TP
styles (TP=2 gives the 1-rank losses to 1e-4 in the CPU test). The checks come first, each
one line naming the fix: CUDA only, torchao installed, and a GPU whose compute capability
is at least 8.9 (Ada, Hopper and later have float8 tensor cores). ``convert_to_float8`` alone
skips them: tests/test_ops.py trains this path on CPU under FSDP2 and TP.

Not done here: float8 FSDP all-gathers (``enable_fsdp_float8_all_gather``), which need a
scale precompute after each optimizer step; weights are gathered in the FSDP param dtype.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from titan_jepa.config import ConfigError, JobConfig

logger = logging.getLogger("titan_jepa")

MIN_CAPABILITY = (8, 9)


def _skip_reason(fqn: str, module: nn.Module) -> str | None:
    if not fqn.startswith("layers."):
        return "outside the transformer blocks"
    if module.in_features % 16 or module.out_features % 16:
        return "float8 matmuls need dimensions divisible by 16"
    return None


def float8_module_filter(module: nn.Module, fqn: str) -> bool:
    """True for the linear layers to convert: those inside model.layers (not ``output``)."""
    return isinstance(module, nn.Linear) and _skip_reason(fqn, module) is None


def check_float8(cfg: JobConfig, device: torch.device | str) -> None:
    """Raise a ConfigError when float8 training cannot run here."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ConfigError(
            f"float8.enable = true needs CUDA (float8 tensor cores on a GPU of compute capability "
            f">= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}); this run is on {device.type}: set "
            f"float8.enable = false")
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        raise ConfigError(
            f"float8.enable = true needs a GPU of compute capability >= "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ada, Hopper: H100/H200, or later); "
            f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}: set float8.enable = false")
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        raise ConfigError("float8.enable = true needs torchao: pip install 'titan-jepa[float8]' "
                          "(or set float8.enable = false)") from None


def apply_float8(model: nn.Module, cfg: JobConfig, device: torch.device | str) -> nn.Module:
    """Check that float8 can run here (CUDA, sm89+, torchao), then convert the model."""
    check_float8(cfg, device)
    return convert_to_float8(model, cfg.float8.recipe)


def convert_to_float8(model: nn.Module, recipe: str) -> nn.Module:
    """Convert the transformer blocks' nn.Linear layers to torchao Float8Linear, in place.

    No hardware check: torch's float8 matmul also runs (slowly) on CPU, which is how the
    tests train this exact path under FSDP2 and TP on gloo. Training runs go through
    ``apply_float8``, which refuses anything but a float8-capable GPU."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    if recipe == "tensorwise":
        config = Float8LinearConfig()
    else:
        config = Float8LinearConfig.from_recipe_name(recipe)
    convert_to_float8_training(model, config=config, module_filter_fn=float8_module_filter)
    converted = sum(1 for m in model.modules() if type(m).__name__ == "Float8Linear")
    skipped = [fqn for fqn, m in model.named_modules()
               if isinstance(m, nn.Linear) and type(m).__name__ != "Float8Linear"]
    logger.info(f"float8 ({recipe}): {converted} linear layers converted; kept in high "
                f"precision: {', '.join(skipped) or 'none'}")
    return model
