"""Dry-run memory planner: will this config fit on the target GPUs, per rank?

    python -m titan_jepa.plan --config train_configs/llama3_8b_multinode.toml --world-size 64
    python -m titan_jepa.plan --config train_configs/llama3_8b_h200.toml --world-size 8 --gpu H100
    python -m titan_jepa.plan --config ... --world-size 64 --parallelism.tp 2   # any override

No GPU and no other process is needed. The planner starts a *fake* process group of the
target world size (one process playing ``--rank``), builds the model on the meta device,
applies the real parallelisation (``titan_jepa.parallel.parallelize``: TP/SP, activation
checkpointing, FSDP2/HSDP) and reads the local shapes of the sharded DTensor parameters.
Parameters, gradients and optimizer state are therefore exact for the layout the run would
use (tested against a real 2-rank run); the FSDP transient and activation terms are
estimates, with the formulas below.

Byte accounting for one rank:

* parameters: the local shard of every parameter (``DTensor.to_local()``) in its storage
  dtype, with FSDP2's padding (a dim-0 shard is ceil(rows / shards) rows on every rank).
  FSDP2 keeps sharded parameters in the dtype they were created in (float32 here);
  ``mixed_precision_param`` only sets the dtype of the unsharded copies used for compute.
* gradients: FSDP2 reduce-scatters in ``mixed_precision_reduce`` and stores the sharded
  gradient in the parameter's storage dtype, so gradients = parameter bytes (float32).
  Without FSDP (TP alone), an untied vocab-sharded embedding gets a whole (Replicate)
  gradient from DTensor's embedding backward; the planner counts it whole.
* optimizer: AdamW keeps ``exp_avg`` and ``exp_avg_sq`` like the (unpadded) local shard
  (2 x fp32 per local element) plus one float32 ``step`` per parameter tensor.
* FSDP transient (estimate): the root's parameters (embeddings, final norm, output) stay
  unsharded from forward to backward, with their unsharded gradients in the reduce dtype;
  per block, the block being computed and the one being prefetched are unsharded in the
  param dtype, and one block's unsharded gradients exist in the reduce dtype before the
  reduce-scatter (``fsdp_reshard_after_forward = "never"``: every block stays unsharded).
  "Unsharded" means gathered over the data-parallel mesh, still TP-local.
* activations (estimate) for one micro-batch of T = local_batch_size x seq_len tokens,
  element size e (2 bytes when ``mixed_precision_param = "bfloat16"``, else 4), model dim h,
  key/value width hk = n_kv_heads x head_dim, FFN width f, TP degree t (sequence parallel
  shards everything by t):
    - a block without checkpointing keeps T x e x (7h + 3hk + 4f) / t bytes for backward:
      two norms' inputs and outputs (4h), q, k, v (h + 2hk), rotated q and k (h + hk), the
      attention output (h), and w1, w3, silu(w1) and their product (4f). A fused (flash /
      flex) attention kernel keeps no S x S score matrix, only the log-sum-exp.
    - a checkpointed block keeps only its input, T x h x e / t, and one block at a time is
      recomputed in full during backward (added once when any block is checkpointed).
    - ``selective`` checkpoints the blocks whose index is a multiple of selective_every
      (as ``apply_ac`` does); ``full`` checkpoints all of them.
    - the head: the logits, their float32 copy for the cross entropy and its float32
      log-probabilities, T x V/t x (e + 8) bytes. Under TP the logits stay vocab-sharded
      and the cross entropy runs on the shards (loss parallel, parallel/loss_parallel.py),
      so each rank holds V/t of the vocabulary (rounded up: the first shards are the
      largest) and no rank gathers T x V logits; ``logits_bytes`` reports this term.
  torch.compile fuses element-wise ops and usually needs somewhat less; JEPA views are
  packed inside the same rows, so seq_len already covers them.
* pipeline parallelism (``pp > 1``): the model is pruned to this rank's stages as
  train.py does (``titan_jepa.parallel.pipeline.build_pipeline``), so parameter, gradient and
  optimizer bytes are those of the stages' own layers (embedding on the first stage, final
  norm and output on the last), exact as above. FSDP under pp keeps the blocks gathered from
  forward to backward (``fsdp_reshard_after_forward = "default"``). Activations: one chunk
  is one stage's forward of one micro-batch (its layers, plus the head on the last stage);
  the rank keeps the chunks the schedule has in flight at its peak: GPipe M (the step's
  micro-batches), 1F1B min(M, pp - rank), the interleaved and zero-bubble schedules
  min(M V, (V - 1) pp + 2 (pp - 1 - rank) + 1) with V stages per rank (Megatron's warm-up
  count; an estimate for zero bubble, which also defers weight gradients), each chunk
  counted at the mean chunk size of the rank's stages.
* context parallelism (``cp > 1``): each rank holds B x S / cp tokens of every micro-batch,
  so the activations and the head above are counted at T = local_batch_size x seq_len / cp.
  Two more terms: the all-gather attention's transient, one layer at a time (the backward
  gathers K and V again, 2 B S hk e / t, and holds their whole-row gradients before the
  reduce-scatter, as many again; on CUDA the masked SDPA kernel takes no grouped-query
  form, so K, V and their gradients are also expanded to all heads, 4 B S h e / t), and the
  attention mask the sdpa path builds once per micro-batch on global indices, B x (S/cp) x S
  booleans kept for the step, plus the additive copy SDPA makes of it in each call
  (B x (S/cp) x S x e). The mask grows with S^2 / cp: at 128k tokens and cp 8 it is 2 GiB of
  booleans per row (FlexAttention's BlockMask, which CP does not run yet, would be a few MiB).
* fits: the total against the GPU's memory less a 10 % reserve (CUDA context, NCCL
  buffers, allocator fragmentation).

Float8 (``[float8]``) does not change these stored bytes (torchao keeps weights in high
precision); the planner applies no float8 conversion.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from titan_jepa.config import ConfigError, JobConfig, load_config, parse_cli_overrides
from titan_jepa.config.dtypes import DTYPES
from titan_jepa.errors import run_main
from titan_jepa.models.llama import ModelArgs, build_model
from titan_jepa.parallel.mesh import ParallelDims, build_mesh
from titan_jepa.parallel.parallelize import parallelize
from titan_jepa.parallel.pipeline import build_pipeline

GiB = 2**30

# Device memory as the driver reports it (nvidia-smi "total"), in bytes.
GPUS = {
    "H100": 81559 * 2**20,  # H100 SXM 80 GB
    "H200": 143771 * 2**20,  # H200 141 GB
}
RESERVE = 0.10  # of the GPU's memory: CUDA context, NCCL buffers, fragmentation

OPT_STEP_BYTES = 4  # AdamW's per-parameter float32 "step"


@dataclass
class Plan:
    world_size: int
    rank: int
    gpu: str
    dp_replicate: int
    dp_shard: int
    tp: int
    num_params: int
    local_param_elems: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    fsdp_transient_bytes: int
    activation_bytes: int
    logits_bytes: int  # the head's part of activation_bytes
    total_bytes: int
    gpu_bytes: int
    usable_bytes: int
    fits: bool
    tokens_per_microbatch: int
    grad_accum: int
    pp: int = 1
    pp_schedule: str = ""
    stages: list[int] = field(default_factory=list)  # the pipeline stages this rank runs
    layers: list[int] = field(default_factory=list)  # the Transformer layers this rank holds
    in_flight_microbatches: int = 1  # micro-batch chunks whose activations are kept at the peak
    cp: int = 1
    cp_gather_bytes: int = 0  # the all-gather attention's transient (one layer)
    cp_mask_bytes: int = 0  # the dense attention mask on global indices, and SDPA's additive copy


def _unique_params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    seen, out = set(), []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        out.append((name, p))
    return out


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if isinstance(p, DTensor) else p


def _tp_local_numel(p: torch.Tensor) -> int:
    """Elements of ``p`` once gathered by FSDP: the global size divided by the TP shards."""
    if not isinstance(p, DTensor):
        return p.numel()
    n = p.numel()
    names = p.device_mesh.mesh_dim_names or ()
    for i, placement in enumerate(p.placements):
        if isinstance(placement, Shard) and i < len(names) and names[i] == "tp":
            n //= p.device_mesh.size(i)
    return n


def _replicated_grad_params(model: nn.Module, fsdp: bool) -> set[int]:
    """Parameters whose gradient is whole on each rank although the parameter is sharded.

    DTensor's embedding backward returns a Replicate gradient for a vocab-sharded (TP)
    embedding; FSDP2 redistributes it to the parameter's placement, but without FSDP it
    stays whole. A tied embedding also gets the output projection's Shard(0) gradient, and
    the sum is sharded."""
    if fsdp:
        return set()
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    return {id(m.weight) for m in model.modules()
            if isinstance(m, nn.Embedding) and isinstance(m.weight, DTensor)
            and any(isinstance(pl, Shard) for pl in m.weight.placements) and uses[id(m.weight)] == 1}


def state_bytes(model: nn.Module, fsdp: bool = True) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and AdamW state of a parallelised model.

    Works on meta parameters (only shapes are read). FSDP2 pads a parameter's dim-0 shard to
    ceil(rows / shards) on every rank and allocates the padded shard, so parameter and
    gradient bytes are the local storage sizes (padding included); AdamW's states are
    ``zeros_like`` the unpadded local shard. ``fsdp``: whether FSDP manages the parameters."""
    params = _unique_params(model)
    trainable = [p for _, p in params if p.requires_grad]
    whole = _replicated_grad_params(model, fsdp)
    return {
        "local_param_elems": sum(_local(p).numel() for _, p in params),
        "param_bytes": sum(_local(p).untyped_storage().nbytes() for _, p in params),
        "grad_bytes": sum(p.numel() * p.element_size() if id(p) in whole
                          else _local(p).untyped_storage().nbytes() for p in trainable),
        "optimizer_bytes": sum(2 * _local(p).numel() * 4 + OPT_STEP_BYTES for p in trainable),
    }


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (FSDP2 gradients are views of one
    reduce-scatter buffer per block)."""
    seen = {}
    for t in tensors:
        st = _local(t).untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def measured_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """The same quantities read from a real (materialised, stepped) model and optimizer."""
    params = [p for _, p in _unique_params(model)]
    out = {"local_param_elems": sum(_local(p).numel() for p in params),
           "param_bytes": _storage_bytes(params),
           "grad_bytes": _storage_bytes([p.grad for p in params if p.grad is not None])}
    if optimizer is not None:
        out["optimizer_bytes"] = _storage_bytes(
            [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)])
    return out


def fsdp_transient_bytes(model: nn.Module, cfg: JobConfig, dims: ParallelDims) -> int:
    if not dims.fsdp_enabled:
        return 0  # nothing is sharded, nothing is gathered
    pdt = DTYPES[cfg.training.mixed_precision_param].itemsize
    rdt = DTYPES[cfg.training.mixed_precision_reduce].itemsize
    block_ids = {id(p) for block in model.layers.values() for p in block.parameters()}
    root = sum(_tp_local_numel(p) for _, p in _unique_params(model) if id(p) not in block_ids)
    blocks = [sum(_tp_local_numel(p) for p in block.parameters()) for block in model.layers.values()]
    biggest = max(blocks) if blocks else 0
    reshard = cfg.parallelism.fsdp_reshard_after_forward
    if reshard == "never" or (dims.pp > 1 and reshard == "default"):
        # (under pp, "default" keeps the blocks gathered from forward to backward)
        gathered = sum(blocks) * pdt
    else:
        gathered = 2 * biggest * pdt  # current + prefetched block
    return root * (pdt + rdt) + gathered + biggest * rdt


def in_flight_chunks(schedule: str, pp: int, pp_rank: int, stages_per_rank: int, microbatches: int) -> int:
    """Micro-batch chunks (one stage's forward of one micro-batch) whose activations a pp
    rank keeps at its peak: GPipe runs every forward first (M); 1F1B runs pp - rank warm-up
    forwards and then alternates (min(M, pp - rank)); the interleaved and zero-bubble
    schedules warm up with (V - 1) pp + 2 (pp - 1 - rank) chunks before alternating
    (Megatron's count; an estimate for the zero-bubble ones, which defer weight gradients)."""
    if schedule == "GPipe":
        return microbatches
    if schedule == "1F1B":
        return min(microbatches, pp - pp_rank)
    v = stages_per_rank
    return min(microbatches * v, (v - 1) * pp + 2 * (pp - 1 - pp_rank) + 1)


def rank_tokens(cfg: JobConfig, cp: int = 1) -> int:
    """The tokens of one micro-batch a rank holds: local_batch_size x seq_len / cp."""
    return cfg.training.local_batch_size * cfg.training.seq_len // cp


def activation_bytes(args: ModelArgs, cfg: JobConfig, tp: int, layers: list[int] | None = None,
                     head: bool = True, in_flight: int = 1, cp: int = 1) -> int:
    """Estimate of the activations kept for backward (see the module doc): ``in_flight``
    micro-batches through ``layers`` (default all) and, with ``head``, the output."""
    layers = range(args.n_layers) if layers is None else layers
    e = DTYPES[cfg.training.mixed_precision_param].itemsize
    tokens = rank_tokens(cfg, cp)
    h, hk, f = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden_dim
    full_block = tokens * e * (7 * h + 3 * hk + 4 * f) // tp
    ckpt_block = tokens * e * h // tp
    ac = cfg.activation_checkpoint
    total, any_ckpt = 0, False
    for layer_id in layers:
        ckpt = ac.mode == "full" or (ac.mode == "selective" and layer_id % ac.selective_every == 0)
        any_ckpt |= ckpt
        total += ckpt_block if ckpt else full_block
    if head:
        total += head_activation_bytes(args, cfg, tp, cp)
    # the block being recomputed in backward: one at a time
    return in_flight * total + (full_block if any_ckpt else 0)


def head_activation_bytes(args: ModelArgs, cfg: JobConfig, tp: int, cp: int = 1) -> int:
    """One micro-batch's logits, their float32 copy and float32 log-probabilities on one
    rank: T x ceil(V / tp) x (e + 8) bytes (vocab-sharded under TP, see the module doc)."""
    e = DTYPES[cfg.training.mixed_precision_param].itemsize
    return rank_tokens(cfg, cp) * -(-args.vocab_size // tp) * (e + 8)


def cp_bytes(args: ModelArgs, cfg: JobConfig, tp: int, cp: int) -> tuple[int, int]:
    """(the all-gather attention's transient for one layer, the dense mask's bytes) on one
    rank under context parallelism (see the module doc); (0, 0) without it."""
    if cp == 1:
        return 0, 0
    e = DTYPES[cfg.training.mixed_precision_param].itemsize
    b, seq = cfg.training.local_batch_size, cfg.training.seq_len
    hk, h = args.n_kv_heads * args.head_dim // tp, args.n_heads * args.head_dim // tp
    gather = 4 * b * seq * hk * e  # K and V gathered again in the backward, their whole-row gradients
    if args.n_kv_heads < args.n_heads:
        gather += 4 * b * seq * h * e  # expanded to every head for CUDA's masked kernel, and their gradients
    mask = b * (seq // cp) * seq * (1 + e)  # booleans kept for the step + SDPA's additive copy in a call
    return gather, mask


def plan(cfg: JobConfig, world_size: int, rank: int = 0, gpu: str = "H200") -> Plan:
    """Build the parallelised meta model for ``rank`` of a fake world and account its bytes.

    Starts (and destroys) a fake process group; run it in a process that has no other."""
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu} is not known; choose one of {', '.join(GPUS)}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"--rank {rank} must be in [0, {world_size})")
    from titan_jepa.config.model import model_args_from_config

    cfg = copy.deepcopy(cfg)
    cfg.float8.enable = False  # storage bytes are the same; torchao needs CUDA
    cfg.compile.enable = False  # compile changes no parameter
    args = model_args_from_config(cfg, vocab_size=0)
    dims = ParallelDims.from_config(cfg, world_size)
    grad_accum = dims.check(cfg, args)
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("plan() starts its own fake process group; call it with none running")
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)
    try:
        mesh, _ = build_mesh(dims, "cpu")
        pp = {}
        if dims.pp > 1:  # this rank's stages alone, as train.py builds them
            model, runner = build_pipeline(lambda: build_model(args, device="meta"), dims, mesh, cfg,
                                           torch.device("cpu"))
            p = cfg.parallelism
            pp = dict(pp=dims.pp, pp_schedule=p.pp_schedule, stages=runner.stage_indices,
                      layers=sorted(int(k) for k in model.layers.keys()),
                      in_flight_microbatches=in_flight_chunks(
                          p.pp_schedule, dims.pp, mesh["pp"].get_local_rank(), p.pp_stages_per_rank, grad_accum))
        else:
            model = parallelize(build_model(args, device="meta"), dims, mesh, cfg)
        sb = state_bytes(model, fsdp=dims.fsdp_enabled)
        transient = fsdp_transient_bytes(model, cfg, dims)
    finally:
        dist.destroy_process_group()
    if pp:
        # a chunk holds one stage's layers; the rank's stages share its in-flight chunks
        per_chunk = activation_bytes(args, cfg, dims.tp, pp["layers"], head=model.output is not None,
                                     in_flight=1, cp=dims.cp) / len(pp["stages"])
        act = int(per_chunk * pp["in_flight_microbatches"])
    else:
        act = activation_bytes(args, cfg, dims.tp, cp=dims.cp)
    gather, mask = cp_bytes(args, cfg, dims.tp, dims.cp)
    # the masks of the micro-batches in flight (one per micro-batch: every stage reads it)
    mask *= pp.get("in_flight_microbatches", 1)
    total = sb["param_bytes"] + sb["grad_bytes"] + sb["optimizer_bytes"] + transient + act + gather + mask
    usable = int(GPUS[gpu] * (1 - RESERVE))
    return Plan(world_size=world_size, rank=rank, gpu=gpu, dp_replicate=dims.dp_replicate,
                dp_shard=dims.dp_shard, tp=dims.tp, num_params=args.num_params(),
                local_param_elems=sb["local_param_elems"], param_bytes=sb["param_bytes"],
                grad_bytes=sb["grad_bytes"], optimizer_bytes=sb["optimizer_bytes"],
                fsdp_transient_bytes=transient, activation_bytes=act,
                logits_bytes=head_activation_bytes(args, cfg, dims.tp, dims.cp), total_bytes=total,
                gpu_bytes=GPUS[gpu], usable_bytes=usable, fits=total <= usable,
                tokens_per_microbatch=rank_tokens(cfg, dims.cp), grad_accum=grad_accum,
                cp=dims.cp, cp_gather_bytes=gather, cp_mask_bytes=mask, **pp)


def format_plan(p: Plan, cfg: JobConfig) -> str:
    t, ac = cfg.training, cfg.activation_checkpoint
    acs = ac.mode + (f" (every {ac.selective_every})" if ac.mode == "selective" else "")
    pdt = t.mixed_precision_param
    rows = [
        ("parameters (fp32 shards)", p.param_bytes),
        ("gradients (fp32 shards)", p.grad_bytes),
        ("optimizer AdamW (2 x fp32 + step)", p.optimizer_bytes),
        (f"FSDP unsharded transient ({pdt} / {t.mixed_precision_reduce})", p.fsdp_transient_bytes),
        (f"activations, estimate ({p.tokens_per_microbatch} tokens, AC {acs})", p.activation_bytes),
    ]
    head = (f"  of which logits + fp32 loss copies (vocab / tp {p.tp})", p.logits_bytes)
    cp_rows = [("CP: one layer's gathered K/V + their gradients", p.cp_gather_bytes),
               ("CP: attention mask (bool + SDPA's additive copy)", p.cp_mask_bytes)] if p.cp > 1 else []
    width = max(len(r[0]) for r in [*rows, head, *cp_rows]) + 2
    lines = [
        f"plan for rank {p.rank} of {p.world_size}: model {cfg.model.flavor} "
        f"({p.num_params / 1e9:.2f}B parameters), mesh pp {p.pp} x dp_replicate {p.dp_replicate} x dp_shard "
        f"{p.dp_shard}{f' x cp {p.cp}' if p.cp > 1 else ''} x tp {p.tp}",
        f"micro-batch {t.local_batch_size} x {t.seq_len} tokens{f' ({p.tokens_per_microbatch} on this rank)' if p.cp > 1 else ''}, gradient accumulation "
        f"{p.grad_accum}, param dtype {pdt}, local parameter elements {p.local_param_elems:,}",
    ]
    if p.pp > 1:
        lines.append(f"pipeline {p.pp_schedule}: this rank runs stage(s) {p.stages} "
                     f"({len(p.layers)} layers), {p.in_flight_microbatches} micro-batch chunk(s) in flight at the peak")
    lines += ["", f"{'per rank':<{width}}{'GiB':>10}{'bytes':>18}"]
    for name, b in [*rows, head, *cp_rows]:
        lines.append(f"{name:<{width}}{b / GiB:>10.2f}{b:>18,}")
    lines.append("-" * (width + 28))
    lines.append(f"{'total':<{width}}{p.total_bytes / GiB:>10.2f}{p.total_bytes:>18,}")
    verdict = "FITS" if p.fits else "DOES NOT FIT"
    lines.append(f"{p.gpu} has {p.gpu_bytes / GiB:.1f} GiB, {p.usable_bytes / GiB:.1f} GiB usable "
                 f"after a {RESERVE:.0%} reserve: {verdict} "
                 f"({100 * p.total_bytes / p.usable_bytes:.0f}% of usable)")
    if not p.fits:
        lines.append("to fit: more data-parallel shards (dp_shard), tp > 1, pp > 1, cp > 1 (long rows), "
                     "activation_checkpoint.mode = 'full', or a smaller local_batch_size / seq_len")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m titan_jepa.plan", description=__doc__.split("\n\n")[0],
                                 epilog="Other --section.key value arguments override the config.")
    ap.add_argument("--config", required=True)
    ap.add_argument("--world-size", type=int, required=True)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--gpu", default="H200", choices=sorted(GPUS))
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    known, rest = ap.parse_known_args(argv)

    def load_and_plan() -> tuple[JobConfig, Plan]:
        cfg = load_config(known.config, parse_cli_overrides(rest)[1])
        return cfg, plan(cfg, known.world_size, known.rank, known.gpu)

    cfg, result = run_main(load_and_plan)
    print(format_plan(result, cfg))
    if known.json:
        with open(known.json, "w") as f:
            json.dump(asdict(result), f, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    main()
