"""The Llama-3 family in plain PyTorch (no torch.distributed here).

State-dict names follow torchtitan's llama3: tok_embeddings, layers.N.attention.{wq,wk,wv,wo},
layers.N.feed_forward.{w1,w2,w3}, layers.N.{attention_norm,ffn_norm}, norm, output.
RoPE uses Meta's interleaved-pair convention (so Hugging Face q/k weights are permuted on
conversion, see titan_jepa/checkpoint/hf.py).

One forward: ``model(x, positions=..., segment_ids=..., ...)`` returns ``ModelOutputs``
(logits and the final normed hidden states). A pipeline stage is the same Transformer with
the parts it does not own removed (``prune``): without its embedding it takes the residual
stream of the previous stage, and without its head it returns the residual stream.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from titan_jepa.models.attention import MaskMeta, build_attention_backend


@dataclass
class RopeScaling:
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    vocab_size: int = 128256
    multiple_of: int = 1024
    ffn_dim_multiplier: float | None = 1.3
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 8192
    tie_embeddings: bool = False
    attn_backend: str = "sdpa"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def check(self) -> None:
        """Raise ValueError (one line naming the fields) for a shape the model cannot build."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} = {getattr(self, name)} must be positive")
        if self.dim % self.n_heads:
            raise ValueError(f"dim = {self.dim} is not divisible by n_heads = {self.n_heads} "
                             f"(head_dim = dim / n_heads); choose n_heads dividing dim")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even (RoPE rotates "
                             f"pairs); change dim or n_heads")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads = {self.n_heads} is not a multiple of n_kv_heads = {self.n_kv_heads} "
                             f"(each KV head serves n_heads / n_kv_heads query heads); choose n_kv_heads "
                             f"dividing n_heads")
        if self.ffn_dim_multiplier is not None and self.ffn_dim_multiplier <= 0:
            raise ValueError(f"ffn_dim_multiplier = {self.ffn_dim_multiplier} must be positive (or none)")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta = {self.rope_theta} and norm_eps = {self.norm_eps} must be positive")
        s = self.rope_scaling
        if s is not None:
            if s.factor <= 0 or s.original_max_position_embeddings <= 0:
                raise ValueError(f"rope scaling factor = {s.factor} and original max_seq_len = "
                                 f"{s.original_max_position_embeddings} must be positive")
            if not 0 < s.low_freq_factor < s.high_freq_factor:
                raise ValueError(f"rope scaling needs 0 < low_freq_factor < high_freq_factor, got "
                                 f"{s.low_freq_factor} and {s.high_freq_factor}")

    def to_dict(self) -> dict:
        """JSON-able fields (rope_scaling a dict or None); from_dict inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        d = dict(d)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown model args {unknown}")
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)

    def num_params(self, include_embedding: bool = True) -> int:
        d, h, kv, hd, f = self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.ffn_hidden_dim
        per_layer = d * h * hd * 2 + d * kv * hd * 2 + 3 * d * f + 2 * d
        emb = self.vocab_size * d
        out = 0 if self.tie_embeddings else self.vocab_size * d
        return self.n_layers * per_layer + d + out + (emb if include_embedding else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (non-embedding params) + attention (12 * L * d * S)."""
        return 6 * self.num_params(include_embedding=False) + 12 * self.n_layers * self.dim * seq_len


class ModelOutputs(NamedTuple):
    """What the forward of a model with its head returns (a tuple, so pipeline stages can
    send it): logits (B, S, V), vocab-sharded under tensor parallelism, or (N, V) at the
    positions the forward's ``logits_at`` named, and the final normed hidden states
    (B, S, D), whole on every rank, which the objectives read."""

    logits: torch.Tensor
    hidden: torch.Tensor


# Meta's published shapes (Llama 3.1 for 8B/70B/405B, Llama 3.2 for 1B/3B).
FLAVORS: dict[str, ModelArgs] = {
    "debug": ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2304,
                       multiple_of=64, ffn_dim_multiplier=None, rope_theta=500000.0,
                       rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=256),
                       max_seq_len=1024),
    "small": ModelArgs(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=2304,
                       multiple_of=64, ffn_dim_multiplier=None, rope_theta=500000.0,
                       max_seq_len=2048, tie_embeddings=True),
    "1B": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256,
                    ffn_dim_multiplier=1.5, rope_scaling=RopeScaling(factor=32.0),
                    max_seq_len=131072, tie_embeddings=True),
    "3B": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256,
                    ffn_dim_multiplier=1.0, rope_scaling=RopeScaling(factor=32.0),
                    max_seq_len=131072, tie_embeddings=True),
    "8B": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, multiple_of=1024,
                    ffn_dim_multiplier=1.3, rope_scaling=RopeScaling(factor=8.0),
                    max_seq_len=131072),
    "70B": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, multiple_of=4096,
                     ffn_dim_multiplier=1.3, rope_scaling=RopeScaling(factor=8.0),
                     max_seq_len=131072),
    "405B": ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, multiple_of=4096,
                      ffn_dim_multiplier=1.2, rope_scaling=RopeScaling(factor=8.0),
                      max_seq_len=131072),
}


def model_args_for(flavor: str, **overrides) -> ModelArgs:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown model flavor '{flavor}'; choose one of {', '.join(FLAVORS)}")
    return replace(FLAVORS[flavor], **{k: v for k, v in overrides.items() if v is not None})


def rope_frequencies(args: ModelArgs, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) with Llama-3.1 scaling when configured."""
    hd = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, device=device, dtype=torch.float64) / hd))
    s = args.rope_scaling
    if s is not None:
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / freqs
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor)
        mid = (1 - smooth) * freqs / s.factor + smooth * freqs
        freqs = torch.where(wavelen < high_wavelen, freqs,
                            torch.where(wavelen > low_wavelen, freqs / s.factor, mid))
    return freqs.float()


def rope_tables(args: ModelArgs, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = rope_frequencies(args, device)
    t = torch.arange(args.max_seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(t, freqs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, S, H, D) with interleaved pairs; cos/sin: (B or 1, S, D/2).

    Each pair (x0, x1) is the complex number x0 + i x1, rotated by cos + i sin (one complex
    multiply is several times faster than the real-arithmetic form in eager mode). Under
    torch.compile the real form is used: inductor has no complex codegen and would fall
    back to eager for the multiply, while the real form fuses into the surrounding kernel."""
    if torch.compiler.is_compiling():
        x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).type_as(x)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    rot = torch.complex(cos.float(), sin.float())[:, :, None, :]  # (float32 tables; .float() is a no-op then)
    return torch.view_as_real(xc * rot).flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, backend):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.backend = backend

    def forward(self, x, cos, sin, mask, kv_cache=None):
        bsz, seqlen, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds a slice of the heads
        q = self.wq(x).view(bsz, seqlen, -1, self.head_dim)
        k = self.wk(x).view(bsz, seqlen, -1, self.head_dim)
        v = self.wv(x).view(bsz, seqlen, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if kv_cache is not None:  # decoding: the cache supplies past keys and the mask
            k, v, mask = kv_cache.update(k, v)
            out = kv_cache.attend(q, k, v, mask)
        else:
            out = self.backend.attend(q, k, v, mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs, backend):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args, backend)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, kv_cache)
        return h + self.feed_forward(self.ffn_norm(h))


def default_write(param: torch.Tensor, full: torch.Tensor) -> None:
    param.copy_(full)


def trunc_normal_(t: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """Fill ``t`` from N(0, std^2) truncated to [-3 std, 3 std], by the inverse CDF of uniform
    draws. The same values on every torch version: ``nn.init.trunc_normal_`` changed its
    algorithm after 2.11, so the same seed gave other weights on 2.11 and 2.13 (this is the
    2.11 algorithm, whose uniform and erfinv draws have not changed)."""
    lo, hi = ((1 + math.erf(x / math.sqrt(2))) / 2 for x in (-3.0, 3.0))
    t.uniform_(2 * lo - 1, 2 * hi - 1, generator=generator)
    return t.erfinv_().mul_(std * math.sqrt(2)).clamp_(-3 * std, 3 * std)


def seeded_generator(seed: int, name: str, device) -> torch.Generator:
    """The generator a parameter's init draws from: seeded by (seed, state-dict name), so
    a weight's values depend neither on the order of init nor on how it is sharded."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    return gen


def clean_name(name: str) -> str:
    """A parameter or module name without the wrappers (activation checkpointing,
    torch.compile) that state-dict keys do not show."""
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


# torchtitan-style depth-scaled init of the Transformer's own weights, by state-dict name:
# (pattern, kind, std); std None: 0.02 / sqrt(2 * (layer_id + 1)). Any other parameter
# belongs to a module that initialises itself (a LoRALinear's adapters: its init_weights)
# or was attached from outside (its owner initialises it).
_INIT_RULES = [
    (re.compile(r"^(layers\.\d+\.(attention|ffn)_)?norm\.weight$"), "ones", 0.0),
    (re.compile(r"^layers\.\d+\.(attention\.w[qkv]|feed_forward\.w1)\.weight$"), "trunc_normal", 0.02),
    (re.compile(r"^layers\.\d+\.(attention\.wo|feed_forward\.w[23])\.weight$"), "trunc_normal", None),
]


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.backend = build_attention_backend(args.attn_backend)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # a ModuleDict keyed by layer index, as torchtitan does, so names survive pruning
        self.layers = nn.ModuleDict(
            {str(i): TransformerBlock(i, args, self.backend) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(args, device=self.tok_embeddings.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ---- initialisation -------------------------------------------------------------
    @classmethod
    def from_parts(cls, parts: list["Transformer"]) -> "Transformer":
        """One Transformer holding the modules of several pruned ones (the stages one
        pipeline rank runs), under their own names: what the optimizer, the checkpoint and
        the initialisation see. The modules are shared, not copied."""
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.args, model.backend = parts[0].args, parts[0].backend
        model.tok_embeddings = next((p.tok_embeddings for p in parts if p.tok_embeddings is not None), None)
        layers = {k: v for p in parts for k, v in p.layers.items()}
        model.layers = nn.ModuleDict({k: layers[k] for k in sorted(layers, key=int)})
        last = next((p for p in parts if p.norm is not None), None)
        model.norm, model.output = (last.norm, last.output) if last is not None else (None, None)
        model.register_buffer("rope_cos", parts[0].rope_cos, persistent=False)
        model.register_buffer("rope_sin", parts[0].rope_sin, persistent=False)
        return model

    def to_empty(self, *, device, recurse: bool = True):
        super().to_empty(device=device, recurse=recurse)
        if self.args.tie_embeddings and self.output is not None and self.tok_embeddings is not None:
            # nn.Module.to_empty gives the shared parameter a separate copy per module
            self.output.weight = self.tok_embeddings.weight
        return self

    def init_buffers(self, device=None) -> None:
        device = device or self.rope_cos.device
        self.rope_cos, self.rope_sin = rope_tables(self.args, device=device)

    def _init_spec(self, name: str) -> tuple[str, float] | None:
        """(kind, std) of one of the Transformer's own parameters; None for any other."""
        if name == "tok_embeddings.weight":
            return ("normal", 0.02) if self.args.tie_embeddings else ("normal", 1.0)
        if name == "output.weight":
            return "trunc_normal", self.args.dim ** -0.5
        for pattern, kind, std in _INIT_RULES:
            if pattern.match(name):
                if std is None:
                    std = 0.02 / (2 * (int(name.split(".")[1]) + 1)) ** 0.5
                return kind, std
        return None

    @torch.no_grad()
    def init_weights(self, seed: int = 0, buffer_device=None,
                     write: Callable[[torch.Tensor, torch.Tensor], None] = default_write) -> None:
        """Initialise every parameter from a generator seeded by (seed, name).

        Each parameter is drawn whole (its global shape) and handed to ``write``, so the
        result does not depend on how the parameters are later sharded: parallel code
        passes a ``write`` that keeps only the local shard. Submodules that own their
        init (they define ``init_weights(seed, prefix, write)``, as LoRALinear does for its
        adapters) are then asked to initialise theirs the same way.
        """
        self.init_buffers(buffer_device)
        for name, param in self.named_parameters():
            name = clean_name(name)  # wrappers must not change the draw
            spec = self._init_spec(name)
            if spec is None:
                continue
            kind, std = spec
            full = torch.empty(param.shape, dtype=torch.float32, device=param.device)
            if kind == "ones":
                full.fill_(1.0)
            elif kind == "normal":
                nn.init.normal_(full, 0.0, std, generator=seeded_generator(seed, name, param.device))
            else:
                trunc_normal_(full, std, seeded_generator(seed, name, param.device))
            write(param, full.to(param.dtype))
        for prefix, module in self.named_modules():
            if module is not self and callable(getattr(type(module), "init_weights", None)):
                module.init_weights(seed=seed, prefix=clean_name(prefix), write=write)

    # ---- forward --------------------------------------------------------------------
    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None,
                context_segment: torch.Tensor | None = None,
                context_len: torch.Tensor | None = None,
                kv_caches=None, last_logits_only: bool = False, logits_at: torch.Tensor | None = None,
                tokens_at: torch.Tensor | None = None, prepared_mask=None):
        """x: token ids (B, S), or the residual stream of the previous pipeline stage when
        this model has no embedding. Returns ModelOutputs (logits (B, S, V), final normed
        hidden (B, S, D)), or the residual stream when it has no head. Mask metadata (see
        models/attention.py) is optional (all None: causal). Decoding (models/kv_cache.py)
        passes explicit positions and one KVCache per layer; ``last_logits_only`` computes
        the logits of the last position alone (B, 1, V). ``logits_at`` (N,) flat indices
        (row * S + position, e.g. ``Batch.targets_at``) computes the logits of those
        positions alone, (N, V): the vocabulary projection and the loss skip every token
        without a label (views, padding, prompts under an answer-only loss). ``tokens_at``
        (T,) flat indices of the tokens that are not padding (``Batch.tokens_at``, with
        segment ids): the layers run on those alone, as one row of T tokens whose segments
        keep their rows' masks, and the hidden states come back as (B, S, D), zeros at the
        padding (the attention backend runs such a row segment by segment).
        ``prepared_mask``: a mask the attention backend takes as it is, instead of one built
        from the metadata here (context parallelism evaluates the rule on global indices,
        parallel/context_parallel.py; ``positions`` then are the local tokens' own)."""
        if tokens_at is not None and segment_ids is not None and self.tok_embeddings is not None \
                and kv_caches is None and 0 < tokens_at.numel() < x.numel():
            return self._forward_unpadded(x, positions, segment_ids, context_segment, context_len,
                                          logits_at, tokens_at)
        meta_shape = next((t.shape for t in (positions, segment_ids) if t is not None), None)
        bsz, seqlen = meta_shape or x.shape[:2]
        if positions is None:
            cos, sin = self.rope_cos[None, :seqlen], self.rope_sin[None, :seqlen]
        else:
            cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        if prepared_mask is not None:
            mask = prepared_mask
        elif kv_caches is None:
            meta = MaskMeta(segment_ids, positions, context_segment, context_len)
            mask = self.backend.build_mask(meta, bsz, seqlen, x.device)
        else:
            mask = None
        h = self.tok_embeddings(x) if self.tok_embeddings is not None else x
        for i, layer in enumerate(self.layers.values()):
            h = layer(h, cos, sin, mask, None if kv_caches is None else kv_caches[i])
        if self.norm is None:  # a pipeline stage before the last
            return h
        h = self.norm(h)
        if last_logits_only:
            h = h[:, -1:]
        if logits_at is not None:
            return ModelOutputs(self.output(h.flatten(0, 1)[logits_at]), h)
        return ModelOutputs(self.output(h), h)

    def _forward_unpadded(self, x, positions, segment_ids, context_segment, context_len, logits_at, tokens_at):
        """forward() on the tokens at ``tokens_at`` alone (see there)."""
        bsz, seqlen = x.shape
        # segment ids are per row: offset each row's by row * S so they stay apart in one row
        row0 = torch.arange(bsz, device=x.device)[:, None] * seqlen
        if positions is None:
            positions = torch.arange(seqlen, device=x.device).expand(bsz, seqlen)

        def pick(t):
            return t.flatten()[tokens_at][None]

        seg = pick(segment_ids.long() + row0)
        ctx = None if context_segment is None else pick(
            torch.where(context_segment >= 0, context_segment.long() + row0, -1))
        pos = pick(positions)
        meta = MaskMeta(seg, pos, ctx, None if context_len is None else pick(context_len))
        mask = self.backend.build_mask(meta, 1, tokens_at.numel(), x.device, packed=True)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        h = self.tok_embeddings(pick(x))
        for layer in self.layers.values():
            h = layer(h, cos, sin, mask)
        h = self.norm(h)[0]
        full = h.new_zeros(bsz * seqlen, h.shape[-1]).index_copy(0, tokens_at, h)
        logits = self.output(full[logits_at] if logits_at is not None else full.view(bsz, seqlen, -1))
        return ModelOutputs(logits, full.view(bsz, seqlen, -1))

    def prune(self, layer_ids: set[int], embedding: bool, head: bool) -> "Transformer":
        """Delete the layers not in ``layer_ids``, and the embedding / final norm and output
        unless kept (a pipeline stage); the names of the rest do not change."""
        for key in list(self.layers.keys()):
            if int(key) not in layer_ids:
                del self.layers[key]
        if not embedding:
            self.tok_embeddings = None
        if not head:
            self.norm = None
            self.output = None
        return self


def build_model(args: ModelArgs, device: str | torch.device = "meta") -> Transformer:
    with torch.device(device):
        return Transformer(args)
