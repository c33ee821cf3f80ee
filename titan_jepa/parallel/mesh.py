"""Parallel degrees, their checks, and the DeviceMesh built from them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from titan_jepa.config import ConfigError, JobConfig
from titan_jepa.models.llama import ModelArgs


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int
    pp: int = 1  # pipeline stages groups (titan_jepa/parallel/pipeline.py)
    cp: int = 1  # context parallel ranks per row (titan_jepa/parallel/context_parallel.py)

    @classmethod
    def from_config(cls, cfg: JobConfig, world_size: int) -> "ParallelDims":
        p = cfg.parallelism
        dp_shard = p.dp_shard
        if dp_shard == -1:
            rest = p.dp_replicate * p.tp * p.pp * p.cp
            if world_size % rest:
                pp = " * parallelism.pp" if p.pp > 1 else ""
                cp = " * parallelism.cp" if p.cp > 1 else ""
                raise ConfigError(
                    f"world size {world_size} is not divisible by parallelism.dp_replicate * "
                    f"parallelism.tp{pp}{cp} = {rest}; change the degrees or the number of processes")
            dp_shard = world_size // rest
        dims = cls(p.dp_replicate, dp_shard, p.tp, world_size, p.pp, p.cp)
        product = dims.pp * dims.dp_replicate * dims.dp_shard * dims.cp * dims.tp
        if product != world_size:
            pp = f"pp={dims.pp} x " if dims.pp > 1 else ""
            cp = f" x cp={dims.cp}" if dims.cp > 1 else ""
            raise ConfigError(
                f"parallelism degrees {pp}dp_replicate={dims.dp_replicate} x dp_shard={dims.dp_shard}{cp} x "
                f"tp={dims.tp} = {product} but the world size is {world_size}; set "
                f"parallelism.dp_shard = -1 to use the rest of the world")
        return dims

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp_enabled(self) -> bool:
        """FSDP shards over dp_shard x cp (the cp ranks of a row hold parts of one gradient)."""
        return self.dp > 1 or self.cp > 1

    def check(self, cfg: JobConfig, args: ModelArgs) -> int:
        """Check the degrees against the model and batch; returns gradient-accumulation steps."""
        tp = self.tp
        for what, n in (("model n_heads", args.n_heads), ("model n_kv_heads", args.n_kv_heads),
                        ("model ffn hidden dim", args.ffn_hidden_dim), ("model dim", args.dim)):
            if n % tp:
                raise ConfigError(f"parallelism.tp={tp} does not divide the {what} ({n}); "
                                  f"choose a tp that divides it")
        if cfg.training.seq_len % tp:
            raise ConfigError(f"training.seq_len={cfg.training.seq_len} must be divisible by "
                              f"parallelism.tp={tp} (sequence parallelism splits the sequence)")
        t = cfg.training
        per_step = t.local_batch_size * self.dp
        if t.global_batch_size % per_step:
            raise ConfigError(
                f"training.global_batch_size={t.global_batch_size} is not a multiple of "
                f"local_batch_size x data-parallel degree = {t.local_batch_size} x {self.dp} = "
                f"{per_step}; change one of them")
        if cfg.training.seq_len > args.max_seq_len:
            raise ConfigError(f"training.seq_len={cfg.training.seq_len} exceeds the model's "
                              f"max_seq_len={args.max_seq_len}; raise model.max_seq_len")
        grad_accum = t.global_batch_size // per_step
        if self.pp > 1:
            self._check_pp(cfg, args, grad_accum)
        if self.cp > 1:
            self._check_cp(cfg, args)
        return grad_accum

    def _check_cp(self, cfg: JobConfig, args: ModelArgs) -> None:
        """What context parallelism runs with today (docs/context_parallel.md), and its shapes."""
        from titan_jepa.parallel.context_parallel import CPShapeError, check_seq_len

        p = cfg.parallelism
        try:
            check_seq_len(cfg.training.seq_len, self.cp, self.tp)
        except CPShapeError as e:
            raise ConfigError(str(e)) from None
        unit = self.cp * p.cp_chunks_per_rank
        if p.cp_balancer == "cost" and cfg.training.seq_len % unit:
            raise ConfigError(f"training.seq_len = {cfg.training.seq_len} does not divide into cp x cp_chunks_per_rank "
                              f"= {unit} chunks (parallelism.cp_balancer = 'cost'); change one of them")
        unsupported = [(args.attn_backend != "sdpa", f"model.attn_backend = '{args.attn_backend}'",
                        "model.attn_backend = 'sdpa'"),
                       (cfg.compile.enable, "compile.enable", "compile.enable = false")]
        for bad, what, fix in unsupported:
            if bad:
                raise ConfigError(f"parallelism.cp = {self.cp} does not run with {what} yet (context parallelism "
                                  f"runs eager with the sdpa backend so far: docs/context_parallel.md); set {fix} or cp = 1")

    def _check_pp(self, cfg: JobConfig, args: ModelArgs, grad_accum: int) -> None:
        """Pipeline degrees against the model and the step's micro-batches (one per local batch)."""
        p = cfg.parallelism
        stages = self.pp * p.pp_stages_per_rank
        if p.pp_microbatches not in (-1, grad_accum):
            raise ConfigError(
                f"parallelism.pp_microbatches={p.pp_microbatches} but a step has global_batch_size / "
                f"(local_batch_size x dp) = {grad_accum} micro-batches; set local_batch_size = "
                f"{cfg.training.global_batch_size // (self.dp * p.pp_microbatches) or 1} or pp_microbatches = -1")
        if p.pp_layers_per_stage:
            if len(p.pp_layers_per_stage) != stages or sum(p.pp_layers_per_stage) != args.n_layers:
                raise ConfigError(
                    f"parallelism.pp_layers_per_stage={p.pp_layers_per_stage} must have pp x pp_stages_per_rank = "
                    f"{stages} entries summing to the model's {args.n_layers} layers")
        elif args.n_layers % stages:
            raise ConfigError(
                f"the model's {args.n_layers} layers do not split evenly over pp x pp_stages_per_rank = {stages} "
                f"stages; choose degrees that divide them or set parallelism.pp_layers_per_stage")
        if args.tie_embeddings:
            raise ConfigError(f"model.flavor = '{cfg.model.flavor}' ties the embedding to the output, which sit on "
                              f"the first and last pipeline stages; use an untied flavor or parallelism.pp = 1")
        if p.pp_schedule in ("1F1B", "GPipe") and grad_accum < self.pp:
            raise ConfigError(
                f"parallelism.pp_schedule = '{p.pp_schedule}' needs at least pp = {self.pp} micro-batches per step, "
                f"got {grad_accum}; lower training.local_batch_size or raise global_batch_size")
        if p.pp_schedule not in ("1F1B", "GPipe") and grad_accum % self.pp:
            raise ConfigError(
                f"parallelism.pp_schedule = '{p.pp_schedule}' needs the micro-batches per step ({grad_accum}) "
                f"to be a multiple of pp = {self.pp}; change training.local_batch_size or global_batch_size")


def device_type_for(cfg: JobConfig) -> str:
    want = cfg.training.device
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device = 'cuda' but no CUDA device is visible; use 'cpu' or 'auto'")
    return want


def init_distributed(cfg: JobConfig) -> tuple[int, int, torch.device]:
    """Start the process group when launched by torchrun; returns (rank, world, device)."""
    device_type = device_type_for(cfg)
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = timedelta(seconds=cfg.parallelism.comm_timeout_s)
        store = _restart_store(world, timeout)
        dist.init_process_group(backend, timeout=timeout, device_id=device if device_type == "cuda" else None,
                                **({"store": store, "rank": rank, "world_size": world} if store else {}))
    return rank, world, device


def _restart_store(world: int, timeout: timedelta):
    """Under torchrun, the agent's TCPStore with a key prefix per restart attempt; else None.

    torchrun (2.13) keeps one agent store for the whole job, so after ``--max-restarts``
    restarts the workers' process groups would read the keys (gloo / NCCL addresses) that
    the killed attempt left behind and hang or fail to connect. The prefix keeps each
    attempt's keys apart."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"titan_jepa/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def build_mesh(dims: ParallelDims, device_type: str) -> tuple[DeviceMesh | None, DeviceMesh | None]:
    """The 3-D mesh (dp_replicate, dp_shard, tp), or with pipeline parallelism the 4-D mesh
    (pp, dp_replicate, dp_shard, tp), and its flattened data-parallel mesh "dp"; (None, None)
    for a single process. pp is outermost: the stages talk point to point only, so they may
    sit on different nodes, while tp stays innermost (within a node)."""
    if dims.world_size == 1:
        return None, None
    shape, names = (dims.dp_replicate, dims.dp_shard, dims.tp), ("dp_replicate", "dp_shard", "tp")
    if dims.cp > 1:  # between dp_shard and tp: [pp, dp_replicate, dp_shard, cp, tp]
        shape, names = shape[:2] + (dims.cp,) + shape[2:], names[:2] + ("cp",) + names[2:]
    if dims.pp > 1:
        shape, names = (dims.pp,) + shape, ("pp",) + names
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
    if dims.cp > 1:  # FSDP's shard dimension (parallelize._fsdp_mesh), the objectives' all-gather
        mesh["dp_shard", "cp"]._flatten("dp_shard_cp")
        mesh["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp")
    return mesh, mesh["dp_replicate", "dp_shard"]._flatten("dp")


@dataclass
class DPInfo:
    """Where this rank sits in the data-parallel group, and the group to reduce over."""

    rank: int = 0
    size: int = 1
    group: object = None

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def all_reduce_min(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return t


def dp_info(dp_mesh: DeviceMesh | None) -> DPInfo:
    if dp_mesh is None:
        return DPInfo()
    return DPInfo(dp_mesh.get_local_rank(), dp_mesh.size(), dp_mesh.get_group())
