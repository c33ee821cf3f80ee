"""Apply tensor/sequence parallelism, activation checkpointing, compile and FSDP2 to a
plain Transformer from outside, in that order (as torchtitan's parallelize does)."""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from titan_jepa.config import JobConfig
from titan_jepa.models.lora import LoRALinear, is_lora_name, lora_modules
from titan_jepa.parallel.float8 import apply_float8
from titan_jepa.parallel.mesh import ParallelDims, device_type_for

from titan_jepa.config.dtypes import DTYPES

logger = logging.getLogger("titan_jepa")


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Megatron-style TP with sequence parallelism: the residual stream is sharded on the
    sequence dimension between blocks; attention and MLP gather it and shard their heads
    (colwise wq/wk/wv/w1/w3, rowwise wo/w2). The output projection is colwise and its
    logits stay vocab-sharded for loss parallel (``loss_parallel.loss_context``). A pipeline
    stage (a pruned model) gets the plan of the parts it has."""
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        # the final norm runs sequence-parallel; its output is gathered so the hidden
        # states the objectives read are whole on every rank
        "norm": SequenceParallel(),
        # the logits stay vocab-sharded (a DTensor Shard(-1)): no rank holds B x S x V of
        # them; the cross entropy runs on the shards (parallel/loss_parallel.py)
        "output": ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1),
                                  use_local_output=False),
    }
    parallelize_module(model, tp_mesh, {k: v for k, v in plan.items() if getattr(model, k) is not None})
    if model.norm is not None:
        parallelize_module(model.norm, tp_mesh, PrepareModuleOutput(
            output_layouts=Shard(1), desired_output_layouts=Replicate(), use_local_output=True))
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, lora_tp_plan(block, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None, None),
                desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),),
                                               desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        }))
    if lora_modules(model):
        # SequenceParallel re-creates the norm weights as trainable: freeze them again
        for name, param in model.named_parameters():
            param.requires_grad_(is_lora_name(name))
    if model.args.tie_embeddings:
        # both are vocab-sharded (Shard(0)) on the tp mesh, so they can share one DTensor
        model.output.weight = model.tok_embeddings.weight
    elif model.tok_embeddings is not None and model.tok_embeddings.weight.requires_grad:  # (frozen under LoRA)
        keep_grad_in_param_layout(model.tok_embeddings.weight)


def keep_grad_in_param_layout(param: DTensor) -> None:
    """DTensor's embedding backward returns a Replicate (whole-vocab) gradient for a
    vocab-sharded weight. Slice it back to the weight's layout as it is produced (a local
    slice, no communication), so a TP-only run stores and updates 1/tp of it, not a full
    vocab x dim gradient per rank. (With FSDP on top, its reduce-scatter brings the gradient
    to the parameter's layout in any case; the FSDP x TP test covers that combination.)"""
    placements = param.placements
    param.register_hook(
        lambda grad: grad if grad.placements == placements else grad.redistribute(placements=placements))


class _LoRAColwise(ColwiseParallel):
    """ColwiseParallel for a LoRALinear (titan_jepa/models/lora.py): the base weight and lora_b
    are sharded on their output rows, lora_a is replicated, so the adapter's output is
    sharded on the last dimension like the base output."""

    def _partition_linear_fn(self, name, module, device_mesh):
        if name in ("", "lora_b"):
            for p_name, param in list(module._parameters.items()):
                if param is not None:
                    module.register_parameter(p_name, nn.Parameter(
                        distribute_tensor(param, device_mesh, [Shard(0)], src_data_rank=self.src_data_rank),
                        requires_grad=param.requires_grad))
        # lora_a (and anything else) is replicated by distribute_module


class _LoRARowwise(RowwiseParallel):
    """RowwiseParallel for a LoRALinear: the base weight and lora_a are sharded on their
    input columns, lora_b is replicated; both paths give partial sums reduced together."""

    def _partition_linear_fn(self, name, module, device_mesh):
        if name in ("", "lora_a"):
            super()._partition_linear_fn(name, module, device_mesh)


def lora_tp_plan(block: nn.Module, plan: dict) -> dict:
    """``plan`` with the colwise / rowwise entries of LoRA layers swapped for the LoRA-aware
    styles (the same layouts for the base weight; the adapters follow it)."""
    out = {}
    for fqn, style in plan.items():
        if isinstance(block.get_submodule(fqn), LoRALinear):
            if isinstance(style, ColwiseParallel):
                style = _LoRAColwise(input_layouts=style.input_layouts[0],
                                     output_layouts=style.output_layouts[0],
                                     use_local_output=style.use_local_output)
            elif isinstance(style, RowwiseParallel):
                style = _LoRARowwise(input_layouts=style.input_layouts[0],
                                     output_layouts=style.output_layouts[0],
                                     use_local_output=style.use_local_output)
        out[fqn] = style
    return out


def apply_ac(model: nn.Module, mode: str, every: int) -> None:
    for layer_id, block in list(model.layers.items()):
        if mode == "full" or (mode == "selective" and int(layer_id) % every == 0):
            model.layers[layer_id] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    for block in model.layers.values():
        block.compile(fullgraph=False)


def block_mp_policy(mp: MixedPrecisionPolicy) -> MixedPrecisionPolicy:
    """The policy of a transformer block: ``mp`` without casting the forward inputs. A block's
    activation input already has the parameter dtype (the embedding's output, or the stage
    input under pp); what casting would change are the float32 RoPE cos/sin tables the model
    hands every block, which in bf16 (8 significant bits) lose the angles at long context."""
    return MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype,
                                output_dtype=mp.output_dtype, cast_forward_inputs=False)


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reduce_dtype: torch.dtype, reshard: str, pipeline: bool = False) -> None:
    """FSDP2 per block, then the model (or pipeline stage) as the root unit. Under pipeline
    parallelism "default" keeps the parameters gathered from forward to backward (else every
    micro-batch would gather them again; torchtitan does the same)."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    if pipeline:
        reshard_after_forward = reshard == "always"
    else:
        reshard_after_forward = {"always": True, "never": False, "default": True}[reshard]
    blocks = list(model.layers.values())
    for i, block in enumerate(blocks):
        # the last block is needed again at once by backward: keep it gathered
        last = i == len(blocks) - 1 and reshard == "default" and not pipeline
        fully_shard(block, mesh=dp_mesh, mp_policy=block_mp_policy(mp),
                    reshard_after_forward=not last and reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def parallelize(model: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None, cfg: JobConfig) -> nn.Module:
    """The one sharding path, for a whole model or one pipeline stage (a pruned model):
    float8, TP/SP, activation checkpointing, compile, then FSDP2."""
    if cfg.float8.enable:  # torchao Float8Linear in the blocks; refused off CUDA sm89+
        apply_float8(model, cfg, device_type_for(cfg))
    if dims.tp > 1:
        apply_tp(model, mesh["tp"])
    if cfg.activation_checkpoint.mode != "none":
        apply_ac(model, cfg.activation_checkpoint.mode, cfg.activation_checkpoint.selective_every)
    if cfg.compile.enable:
        apply_compile(model)
    if dims.fsdp_enabled:
        apply_fsdp(model, _fsdp_mesh(dims, mesh), DTYPES[cfg.training.mixed_precision_param],
                   DTYPES[cfg.training.mixed_precision_reduce],
                   cfg.parallelism.fsdp_reshard_after_forward, pipeline=dims.pp > 1)
    return model


def autocast_dtype(dims: ParallelDims, cfg: JobConfig) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in when FSDP does not apply the mixed precision.

    ``training.mixed_precision_param`` is FSDP2's param dtype: with dp_shard x dp_replicate x
    cp > 1 FSDP casts the parameters for the forward and backward. On one data-parallel rank
    there is no FSDP, and the setting used to be ignored (a one-GPU bf16 run trained in fp32):
    then the forward and the loss run under torch.autocast in that dtype, with fp32 parameters,
    gradients and optimizer state (torchtitan's one-device AMP). With tp or pp > 1 and no FSDP
    the run stays in fp32, with a warning naming the fix."""
    dtype = DTYPES[cfg.training.mixed_precision_param]
    if dtype == torch.float32 or dims.fsdp_enabled:
        return None
    if dims.tp > 1 or dims.pp > 1:
        logger.warning(f"training.mixed_precision_param = '{cfg.training.mixed_precision_param}' is FSDP's param "
                       f"dtype and this layout has no FSDP (one data-parallel rank with tp {dims.tp} x pp "
                       f"{dims.pp}): training in float32; give FSDP a dimension (parallelism.dp_shard >= 2) for "
                       f"mixed precision, or set mixed_precision_param = 'float32' to silence this")
        return None
    logger.info(f"mixed precision on one data-parallel rank: torch.autocast({dtype}) over the forward and the "
                f"loss, float32 parameters, gradients and optimizer state")
    return dtype


def _fsdp_mesh(dims: ParallelDims, mesh: DeviceMesh) -> DeviceMesh:
    shard = "dp_shard_cp" if dims.cp > 1 else "dp_shard"  # the cp ranks of a row share its gradient
    return mesh["dp_replicate", shard] if dims.dp_replicate > 1 else mesh[shard]


def parallelize_heads(heads: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None, cfg: JobConfig) -> nn.Module:
    """The objectives' heads (objectives/heads.py; each a bias-free d x d Linear the loss calls
    outside the model's forward): whole on every tp rank (colwise, output replicated), and
    each its own FSDP unit on the dp mesh, with the model's mixed precision."""
    for module in heads.values():
        if dims.tp > 1:
            parallelize_module(module, mesh["tp"], ColwiseParallel(output_layouts=Replicate()))
        if dims.fsdp_enabled:
            mp = MixedPrecisionPolicy(param_dtype=DTYPES[cfg.training.mixed_precision_param],
                                      reduce_dtype=DTYPES[cfg.training.mixed_precision_reduce])
            fully_shard(module, mesh=_fsdp_mesh(dims, mesh), mp_policy=mp,
                        reshard_after_forward=cfg.parallelism.fsdp_reshard_after_forward != "never")
    return heads


def write_sharded(param: torch.Tensor, full: torch.Tensor) -> None:
    """Keep this rank's part of a whole tensor (identical on every rank) in ``param``."""
    if isinstance(param, DTensor):
        whole = DTensor.from_local(full, param.device_mesh, [Replicate()] * param.device_mesh.ndim,
                                   run_check=False)
        param.to_local().copy_(whole.redistribute(param.device_mesh, param.placements).to_local())
    else:
        param.copy_(full)


@torch.no_grad()
def clip_grad_norm_(params: list[torch.Tensor], max_norm: float, pp_group=None) -> torch.Tensor:
    """Global gradient norm over (possibly sharded DTensor) parameters, then clip.

    Gradients on different meshes (or plain tensors) are normed per group; each DTensor
    group's norm is made whole (summing partial squares over its mesh) before combining.
    ``pp_group``: the parameters are this rank's pipeline stages; the squares of every
    stage's norm are summed over the group (the all-reduce is here, visible)."""
    groups: dict[object, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            groups.setdefault(key, []).append(p.grad)
    norms = []
    for grads in groups.values():
        n = torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())
    if pp_group is not None:
        sq = total.double().pow(2).reshape(1)
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=pp_group)
        total = sq.sqrt().to(total.dtype).reshape(())
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total
