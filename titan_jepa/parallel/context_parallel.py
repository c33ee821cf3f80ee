"""Context parallelism (CP) by all-gathering K/V, as Llama 3 trained its long contexts.

Each row of S tokens is split over the ``cp`` ranks of a CP group by one permutation
(``Sharding``): rank r holds the tokens at ``sharding.index[r]`` (S / cp of them, in that
order). Every (B, S) field of a batch is indexed by it, so tokens, labels, positions (the
per-document ones: never a fresh arange), segment ids and contexts travel together. In each
attention layer a rank holds the queries, keys and values of its own tokens; it all-gathers
K and V after RoPE with ``n_kv_heads`` only (GQA stays unexpanded) and attends with its
local queries against all S keys under the mask rule of models/attention.py evaluated on
global indices (``pairs_allowed``), so any block-sparse mask (documents, LLM-JEPA views,
predictor tokens, shared-prefix contexts, STP) is served exactly.

``AllGatherAttention`` is one autograd function: the forward gathers K/V, attends and keeps
only the local q/k/v; the backward gathers K/V again (recomputing the gather instead of
keeping the S-long copies), recomputes the local attention and reduce-scatters dK/dV back
to their owners. Kept instead, the gathered K/V would cost 2 x B x S x n_kv_heads x
head_dim elements per layer for the whole step (at 128k tokens, 8 KV heads of 128, bf16:
512 MiB per layer), for one all-gather less per layer in the backward.

Balancers (``shard``): ``head_tail`` splits each row into 2 x cp chunks and gives rank r
chunks r and 2cp-1-r, which balances a plain causal mask exactly; ``cost`` (for sparse masks
such as packed LLM-JEPA rows) cuts the row into ``chunks_per_rank`` x cp chunks, weighs each
chunk by the (query, key) pairs its queries may attend to, and deals them to the ranks
heaviest first (each rank gets the same number of chunks, so the same number of tokens).
``balance`` reports the max/mean attention cost over the ranks of a sharding.

``CPRunner`` runs a step's micro-batches under CP (train.py uses it for ``[parallelism] cp >
1``); ``GatheredRows`` lets the objectives read hidden states by global position (LLM-JEPA's
view embeddings), each rank computing its block of the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from titan_jepa.models.attention import MaskMeta, pairs_allowed
from titan_jepa.parallel.loss_parallel import loss_context

BALANCERS = ("head_tail", "cost")


class CPShapeError(ValueError):
    """A row length context parallelism cannot split (one line, naming the valid lengths)."""


def check_seq_len(seq_len: int, cp: int, tp: int = 1) -> None:
    """Raise CPShapeError unless ``seq_len`` divides by tp x 2 x cp (2 x cp chunks of equal
    length per row, each a multiple of tp for sequence parallelism)."""
    unit = tp * 2 * cp
    if seq_len % unit:
        lo, hi = seq_len - seq_len % unit, seq_len - seq_len % unit + unit
        near = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        raise CPShapeError(f"training.seq_len = {seq_len} does not divide by tp x 2 x cp = {tp} x 2 x {cp} = "
                           f"{unit}; use training.seq_len = {near}")


@dataclass
class Sharding:
    """``index`` (cp, S / cp): the global token indices each CP rank holds, in its order."""

    index: torch.Tensor

    @property
    def cp(self) -> int:
        return self.index.shape[0]

    @property
    def key_order(self) -> torch.Tensor:
        """(S,) the global index of each key after the all-gather (rank 0's tokens first)."""
        return self.index.flatten()

    def local(self, t: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank ``rank``'s part of a (B, S, ...) tensor."""
        return t[:, self.index[rank]]

    def restore(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The (B, S, ...) tensor whose rank parts are ``parts`` (the inverse of ``local``)."""
        out = torch.empty(parts[0].shape[0], self.index.numel(), *parts[0].shape[2:], dtype=parts[0].dtype,
                          device=parts[0].device)
        for r, p in enumerate(parts):
            out[:, self.index[r]] = p
        return out


def head_tail(seq_len: int, cp: int) -> Sharding:
    """2 x cp equal chunks; rank r holds chunks r and 2cp-1-r."""
    check_seq_len(seq_len, cp)
    chunks = torch.arange(seq_len).view(2 * cp, -1)
    return Sharding(torch.stack([torch.cat((chunks[r], chunks[2 * cp - 1 - r])) for r in range(cp)]))


def pair_costs(meta: MaskMeta, seq_len: int) -> torch.Tensor:
    """(S,) the keys each query may attend to, summed over the batch's rows."""
    idx = torch.arange(seq_len, device=meta.segment_ids.device if meta.segment_ids is not None else None)
    if meta.segment_ids is None:
        return (idx + 1).float()
    return pairs_allowed(meta, idx, idx).sum(dim=(0, 2)).float()


def cost_balanced(meta: MaskMeta, seq_len: int, cp: int, chunks_per_rank: int = 4) -> Sharding:
    """Chunks of S / (cp x chunks_per_rank) tokens dealt to the ranks by attention cost:
    heaviest first, each to the rank with the least cost that still has room."""
    n = cp * chunks_per_rank
    if seq_len % n:
        raise CPShapeError(f"training.seq_len = {seq_len} does not divide into cp x chunks_per_rank = {n} chunks "
                           f"for the cost balancer; use a multiple of {n}")
    cost = pair_costs(meta, seq_len).view(n, -1).sum(1).tolist()
    load, owned = [0.0] * cp, [[] for _ in range(cp)]
    for c in sorted(range(n), key=lambda i: -cost[i]):
        r = min((r for r in range(cp) if len(owned[r]) < chunks_per_rank), key=lambda r: load[r])
        owned[r].append(c)
        load[r] += cost[c]
    chunks = torch.arange(seq_len).view(n, -1)
    return Sharding(torch.stack([torch.cat([chunks[c] for c in sorted(owned[r])]) for r in range(cp)]))


def shard(meta: MaskMeta, seq_len: int, cp: int, balancer: str = "head_tail", chunks_per_rank: int = 4) -> Sharding:
    if balancer == "head_tail":
        return head_tail(seq_len, cp)
    if balancer == "cost":
        return cost_balanced(meta, seq_len, cp, chunks_per_rank)
    raise ValueError(f"unknown CP balancer '{balancer}'; use one of {', '.join(BALANCERS)}")


def balance(meta: MaskMeta, sharding: Sharding) -> float:
    """max / mean over the CP ranks of the (query, key) pairs their queries attend to."""
    cost = pair_costs(meta, sharding.index.numel())
    per_rank = torch.stack([cost[sharding.index[r]].sum() for r in range(sharding.cp)])
    return float(per_rank.max() / per_rank.mean())


# ---- the all-gather attention ------------------------------------------------------------
def _gather_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(B, H, S_local, D) on every rank -> (B, H, cp x S_local, D), rank 0's part first."""
    cp = dist.get_world_size(group)
    flat = x.permute(2, 0, 1, 3).contiguous()  # the sequence first: the collectives split dim 0
    out = flat.new_empty(cp * flat.shape[0], *flat.shape[1:])
    dist.all_gather_into_tensor(out, flat, group=group)
    return out.permute(1, 2, 0, 3)


def _reduce_scatter_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(B, H, cp x S_local, D) on every rank -> the sum over ranks of this rank's part."""
    cp, rank = dist.get_world_size(group), dist.get_rank(group)
    flat = x.permute(2, 0, 1, 3).contiguous()
    if dist.get_backend(group) == "gloo":  # gloo has no reduce_scatter: all-reduce, keep ours
        dist.all_reduce(flat, group=group)
        out = flat.chunk(cp)[rank].contiguous()
    else:
        out = flat.new_empty(flat.shape[0] // cp, *flat.shape[1:])
        dist.reduce_scatter_tensor(out, flat, group=group)
    return out.permute(1, 2, 0, 3)


def local_attention(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """SDPA of local queries against all keys under ``allowed`` (B, 1, Sq, Sk); a query row
    with no allowed key gives 0 (and no NaN, forward or backward)."""
    empty = ~allowed.any(-1, keepdim=True)  # such rows attend to key 0, then give 0 (no host read)
    allowed = allowed | (empty & (torch.arange(allowed.shape[-1], device=allowed.device) == 0))
    gqa = k.shape[1] != q.shape[1]
    if gqa and q.device.type == "cuda":
        # CUDA's masked (memory-efficient) kernel takes no enable_gqa: with it SDPA would fall
        # back to the math kernel and its (S/cp) x S scores per head; expand k/v instead
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        gqa = False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)
    return out.masked_fill(empty, 0.0)


_FLEX = None


def flex_block_mask(meta: MaskMeta, sharding: Sharding, rank: int, device=None, block_size: int = 128):
    """The FlexAttention form of ``cp_mask``: a BlockMask over this rank's queries x all keys
    in gathered order, the rule evaluated on their global indices (blocks no pair of which
    the rule allows are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    if device is None:  # (create_block_mask's own default is "cuda")
        device = meta.segment_ids.device if meta.segment_ids is not None else torch.device("cpu")
    q_glob, k_glob = sharding.index[rank].to(device), sharding.key_order.to(device)
    seg, ctx_seg, ctx_len, pos = meta.segment_ids, meta.context_segment, meta.context_len, meta.positions

    def mask_mod(b, h, q, k):
        qg, kg = q_glob[q], k_glob[k]
        allowed = qg >= kg
        if seg is not None:
            allowed = allowed & (seg[b, qg] == seg[b, kg])
            if ctx_seg is not None:
                allowed = allowed | ((ctx_seg[b, qg] == seg[b, kg]) & (pos[b, kg] < ctx_len[b, qg]))
        return allowed

    batch = None if seg is None else seg.shape[0]
    return create_block_mask(mask_mod, batch, None, q_glob.numel(), k_glob.numel(), device=device,
                             BLOCK_SIZE=block_size)


def _attend(q, k, v, mask) -> torch.Tensor:
    """Local queries against all keys: SDPA under a dense ``mask``, or FlexAttention under a
    BlockMask (compiled; a fully masked query row gives 0 there too)."""
    if isinstance(mask, torch.Tensor):
        return local_attention(q, k, v, mask)
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX(q, k, v, block_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


class AllGatherAttention(torch.autograd.Function):
    """out = attention(q_local, all_gather(k), all_gather(v)) under ``mask`` (dense, or a
    FlexAttention BlockMask); see the module docstring for what the backward recomputes."""

    @staticmethod
    def forward(ctx, q, k, v, mask, group):
        with torch.no_grad():
            out = _attend(q, _gather_seq(k, group), _gather_seq(v, group), mask)
        ctx.save_for_backward(q, k, v)
        ctx.mask, ctx.group = mask, group
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        with torch.no_grad():  # the gather again (kept from the forward it would hold S-long K/V)
            kk, vv = _gather_seq(k, ctx.group), _gather_seq(v, ctx.group)
        with torch.enable_grad():
            qd, kk, vv = (t.detach().requires_grad_() for t in (q, kk, vv))
            out = _attend(qd, kk, vv, ctx.mask)
            dq, dk, dv = torch.autograd.grad(out, (qd, kk, vv), grad_out)
        return dq, _reduce_scatter_seq(dk, ctx.group), _reduce_scatter_seq(dv, ctx.group), None, None


def cp_mask(meta: MaskMeta, sharding: Sharding, rank: int, device=None) -> torch.Tensor:
    """(B or 1, 1, S/cp, S): which of all keys (in gathered order) each of ``rank``'s queries
    may attend to; ``meta`` holds the whole rows."""
    return pairs_allowed(meta, sharding.index[rank].to(device), sharding.key_order.to(device))[:, None]


class CPAttention:
    """The attention backend of a model under context parallelism: the model's forward gets
    ``prepared_mask=cp_mask(...)`` and every layer attends through AllGatherAttention over
    ``group`` (``apply_cp`` installs it)."""

    name = "cp"

    def __init__(self, group):
        self.group = group

    def build_mask(self, meta, batch, seq_len, device, packed=False):
        raise RuntimeError("under context parallelism the mask is built on global indices by the caller: "
                           "pass prepared_mask=context_parallel.cp_mask(...) to the model's forward")

    def attend(self, q, k, v, mask) -> torch.Tensor:
        return AllGatherAttention.apply(q, k, v, mask, self.group)


def apply_cp(model, group) -> None:
    """Route every attention layer of ``model`` through CPAttention over ``group``."""
    model.backend = CPAttention(group)
    for layer in model.layers.values():
        layer.attention.backend = model.backend


def cp_attention(q, k, v, meta: MaskMeta, sharding: Sharding, group) -> torch.Tensor:
    """Attention of this rank's queries (B, Hq, S/cp, D) against every rank's keys and values
    (each rank passes its own (B, Hkv, S/cp, D)); ``meta`` is the whole rows' mask metadata
    (B, S), the same on every rank of the group."""
    rank = dist.get_rank(group)
    allowed = pairs_allowed(meta, sharding.index[rank].to(q.device), sharding.key_order.to(q.device))
    return AllGatherAttention.apply(q, k, v, allowed[:, None], group)


# ---- objectives under CP: embeddings read where they live --------------------------------
class _SumOverGroup(torch.autograd.Function):
    """all-reduce (sum) whose backward is the same all-reduce: every rank's loss reaches the
    rank that contributed the row."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, group=group)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def rows_at(hidden_local: torch.Tensor, idx: torch.Tensor, sharding: Sharding, rank: int, group) -> torch.Tensor:
    """(M, D): the whole rows' hidden states at ``idx`` (M, 2) of (row, global position), on
    every rank of the group: each rank reads the positions it holds (``hidden_local`` is its
    (B, S/cp, D)), the rest are zeros, and the group sums them (differentiably). LLM-JEPA's
    view embeddings and STP's span rows under CP: their terms then run on these as on one process."""
    seq = sharding.index.numel()
    owner = torch.empty(seq, dtype=torch.int64, device=idx.device)
    where = torch.empty(seq, dtype=torch.int64, device=idx.device)
    for r in range(sharding.cp):
        owner[sharding.index[r].to(idx.device)] = r
        where[sharding.index[r].to(idx.device)] = torch.arange(sharding.index.shape[1], device=idx.device)
    cols = idx[:, 1]
    mine = (owner[cols] == rank)[:, None]
    rows = torch.where(mine, hidden_local[idx[:, 0], where[cols]], 0.0)
    return _SumOverGroup.apply(rows, group)


class GatheredRows:
    """``ModelOutputs.hidden`` under CP, read through objectives/base.py's ``hidden_at`` and
    ``own_items``: ``at(rows, cols)`` gathers those M rows of the whole sequence on every rank
    of the group (``rows_at``), and ``own_items(m)`` is this rank's ``sample_block``, so each
    item's term (LLM-JEPA's samples, STP's pairs or triples) is computed on one rank.
    ``shape`` is the whole rows' (B, S, D)."""

    def __init__(self, local: torch.Tensor, sharding: Sharding, rank: int, group):
        self.local, self.sharding, self.rank, self.group = local, sharding, rank, group

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.local.shape[0], self.sharding.index.numel(), self.local.shape[2]))

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return rows_at(self.local, torch.stack((rows, cols), 1), self.sharding, self.rank, self.group)

    def own_items(self, m: int) -> slice:
        return sample_block(m, self.sharding.cp, self.rank)


def sample_block(m: int, cp: int, rank: int) -> slice:
    """The contiguous block of ``m`` samples whose loss terms rank ``rank`` computes (each
    sample's distance once over the group; the blocks cover 0..m in rank order)."""
    edges = [m * r // cp for r in range(cp + 1)]
    return slice(edges[rank], edges[rank + 1])


# ---- the runner: a step's micro-batches under CP ---------------------------------------------
class CPRunner:
    """``LocalRunner`` for a model under context parallelism (``apply_cp``): each
    micro-batch's rows are sharded over the CP group (``parallelism.cp_balancer``), the model
    runs on this rank's tokens and per-document positions with the mask on global indices,
    and the objectives see the local tokens' labels and hidden states they index by global
    position (``GatheredRows``: each rank gets its block of LLM-JEPA's samples); their
    all-gather (InfoNCE's negatives, diagnostics) spans dp x cp. Each rank's loss is its part of the
    step's sums: the sums are added over the group (``share``), and FSDP, which shards over
    dp_shard x cp, averages gradients over the cp ranks too (``loss_scale``)."""

    grad_group = None  # the gradient norm: FSDP's DTensors already span the cp ranks

    def __init__(self, model, group, rank: int, cp: int, balancer: str = "head_tail", chunks_per_rank: int = 4):
        self.model, self.group, self.rank, self.cp = model, group, rank, cp
        self.balancer, self.chunks_per_rank = balancer, chunks_per_rank
        self.loss_scale = cp

    def local_step(self, mb):
        """(this rank's view of micro-batch ``mb``, its mask on global indices, the sharding)."""
        local, meta, sh = self.local_batch(mb)
        return local, cp_mask(meta, sh, self.rank, mb.tokens.device), sh

    def local_batch(self, mb):
        """(this rank's view of micro-batch ``mb``, the whole rows' mask metadata, the sharding)."""
        from dataclasses import replace

        bsz, seq = mb.tokens.shape
        meta = MaskMeta(mb.segment_ids, mb.positions, mb.context_segment, mb.context_len)
        sh = shard(meta, seq, self.cp, self.balancer, self.chunks_per_rank)
        positions = mb.positions if mb.positions is not None else \
            torch.arange(seq, device=mb.tokens.device).expand(bsz, seq)
        local = replace(mb, tokens=sh.local(mb.tokens, self.rank), labels=sh.local(mb.labels, self.rank),
                        positions=sh.local(positions, self.rank), segment_ids=None, context_segment=None,
                        context_len=None, targets_at=None, tokens_at=None)
        return local, meta, sh

    def run(self, micro_batches: list, loss_fn, backward: bool = True) -> list:
        results = []
        for mb in micro_batches:
            local, mask, sh = self.local_step(mb)
            with loss_context(self.model):  # loss parallel under TP (vocab-sharded logits)
                outputs = self.model(local.tokens, positions=local.positions, prepared_mask=mask)
                # the objectives read hidden states by global position, wherever they live
                outputs = type(outputs)(outputs.logits, self.gathered(outputs.hidden, sh))
                loss, result = loss_fn(outputs, local)
                if backward:
                    loss.backward()
            results.append(result)
        return results

    def gathered(self, hidden_local: torch.Tensor, sharding: Sharding) -> GatheredRows:
        return GatheredRows(hidden_local, sharding, self.rank, self.group)

    def shard_micro_batches(self, micro_batches: list) -> tuple[list, dict[str, torch.Tensor], list[Sharding]]:
        """For a pipeline schedule (parallel/pipeline.py): this rank's view of each micro-batch,
        the stages' keyword inputs concatenated on the batch dimension (the local positions and
        each micro-batch's mask on global indices, which the schedule splits back), and the
        shardings."""
        views, positions, masks, shardings = [], [], [], []
        for mb in micro_batches:
            local, mask, sh = self.local_step(mb)
            views.append(local)
            positions.append(local.positions)
            masks.append(mask.expand(local.tokens.shape[0], *mask.shape[1:]))
            shardings.append(sh)
        return views, {"positions": torch.cat(positions), "prepared_mask": torch.cat(masks)}, shardings

    def share(self, sums: torch.Tensor) -> torch.Tensor:
        """The step's sums over the CP group (each rank summed its own tokens)."""
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=self.group)
        return sums

    def init_buffers(self, device) -> None:
        """Nothing beyond the model's own."""
