"""The configuration's schema: one dataclass per TOML section, and JobConfig holding them.

titan_jepa/config/load.py loads TOML files and CLI overrides onto these (checking every value
against its field's type, ``Literal[...]`` choices included) and runs the cross-field
checks; import the classes from either module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from titan_jepa.errors import ConfigError


class Section:
    """A TOML section; ``check()`` raises a one-line ConfigError for a value out of range."""

    def check(self) -> None:
        """Nothing to check beyond the types the loader checked."""


@dataclass
class Job(Section):
    name: str = "run"
    dump_folder: str = "./outputs"  # the run folder is dump_folder/name
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms on top of seeding


@dataclass
class Model(Section):
    """The model shape: a base (the flavor) with any field below overriding it (-1, "" or
    unset: the base's). titan_jepa/config/model.py resolves it."""

    # titan_jepa.models.llama.FLAVORS; "": the config.json of checkpoint.initial_load_path
    # when initial_load_format = "hf", else "debug"
    flavor: str = ""
    attn_backend: Literal["sdpa", "flex"] = "sdpa"  # "sdpa" (any device) or "flex" (FlexAttention, CUDA fast path)
    vocab_size: int = -1  # -1: the flavor's (or the tokenizer's, when it is smaller) size
    max_seq_len: int = -1  # -1: the flavor's; RoPE tables are built for this length
    norm_eps: float = -1.0  # -1: the flavor's
    dim: int = -1
    n_layers: int = -1
    n_heads: int = -1
    n_kv_heads: int = -1
    multiple_of: int = -1  # the FFN hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float = -1.0  # 0: none (hidden = 8/3 dim, rounded up to multiple_of)
    rope_theta: float = -1.0
    rope_scaling: Literal["", "none", "llama3"] = ""  # "none" or "llama3" (Llama-3.1 frequency scaling); "": the flavor's
    rope_factor: float = -1.0  # llama3 scaling fields; -1: the flavor's (Meta's defaults 8, 1, 4, 8192)
    rope_low_freq_factor: float = -1.0
    rope_high_freq_factor: float = -1.0
    rope_original_max_seq_len: int = -1
    tie_embeddings: bool | None = None  # None (unset): the flavor's

    def check(self) -> None:
        for name in ("vocab_size", "max_seq_len", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
                     "rope_original_max_seq_len", "norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor",
                     "rope_high_freq_factor"):
            if getattr(self, name) <= 0 and getattr(self, name) != -1:
                raise ConfigError(f"model.{name} = {getattr(self, name)} must be positive (or -1: the flavor's)")
        if self.ffn_dim_multiplier < 0 and self.ffn_dim_multiplier != -1:
            raise ConfigError(f"model.ffn_dim_multiplier = {self.ffn_dim_multiplier} must be positive, 0 (none) "
                              f"or -1 (the flavor's)")


@dataclass
class Training(Section):
    steps: int = 50  # -1: as many as data.num_epochs of data give (counted before training)
    global_batch_size: int = 8  # sequences per optimizer step, summed over data-parallel ranks
    local_batch_size: int = 4  # sequences per micro-batch on one rank
    seq_len: int = 128
    max_norm: float = 1.0  # gradient clipping; <= 0 disables it
    mixed_precision_param: Literal["float32", "bfloat16"] = "float32"  # the FSDP param dtype
    mixed_precision_reduce: Literal["float32"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def check(self) -> None:
        for name in ("steps", "global_batch_size", "local_batch_size", "seq_len"):
            if getattr(self, name) <= 0 and not (name == "steps" and self.steps == -1):
                raise ConfigError(f"training.{name} must be positive, got {getattr(self, name)}")
        if self.max_norm < 0:
            raise ConfigError(f"training.max_norm = {self.max_norm} must be >= 0 (0: no gradient clipping)")


@dataclass
class Optimizer(Section):
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    implementation: Literal["auto", "foreach", "fused", "for-loop"] = "auto"

    def check(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr = {self.lr} must be positive (e.g. 3e-4)")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optimizer.{name} = {getattr(self, name)} must be in [0, 1)")
        if not self.eps > 0:
            raise ConfigError(f"optimizer.eps = {self.eps} must be positive (e.g. 1e-8)")
        if not self.weight_decay >= 0:
            raise ConfigError(f"optimizer.weight_decay = {self.weight_decay} must be >= 0")


@dataclass
class LRScheduler(Section):
    warmup_steps: int = 10
    decay_type: Literal["linear", "cosine", "wsd", "constant"] = "cosine"
    decay_ratio: float = 0.2  # wsd only: the fraction of steps spent decaying at the end
    min_lr_ratio: float = 0.1  # the final lr as a fraction of optimizer.lr

    def check(self) -> None:
        if self.warmup_steps < 0:
            raise ConfigError("lr_scheduler.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError("lr_scheduler.min_lr_ratio must be in [0, 1]")
        if not 0.0 <= self.decay_ratio <= 1.0:
            raise ConfigError("lr_scheduler.decay_ratio must be in [0, 1]")


@dataclass
class Parallelism(Section):
    dp_replicate: int = 1  # HSDP replica groups (usually nodes)
    dp_shard: int = -1  # FSDP shard group size; -1: what remains of the world size
    tp: int = 1  # tensor (and sequence) parallel degree
    # context parallel (parallel/context_parallel.py): each row split over cp ranks, K/V all-gathered
    cp: int = 1
    cp_balancer: Literal["head_tail", "cost"] = "head_tail"  # cost: for sparse (packed, LLM-JEPA) masks
    cp_chunks_per_rank: int = 4  # the cost balancer's chunks per rank
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
    comm_timeout_s: int = 600
    # pipeline parallelism (titan_jepa/parallel/pipeline.py)
    pp: int = 1  # pipeline degree: the layers are split over pp stage groups
    pp_schedule: Literal["1F1B", "GPipe", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble"] = "1F1B"
    pp_microbatches: int = -1  # micro-batches per step; -1: global_batch / (local_batch x dp)
    pp_stages_per_rank: int = 1  # virtual stages per pp rank (interleaved and ZBV schedules: >= 2)
    pp_layers_per_stage: list[int] = field(default_factory=list)  # layers of each stage; empty: even split

    def check(self) -> None:
        if self.dp_replicate < 1 or self.tp < 1 or (self.dp_shard < 1 and self.dp_shard != -1):
            raise ConfigError("parallelism degrees must be >= 1 (dp_shard may be -1: the rest of the world size)")
        if self.cp < 1 or self.cp_chunks_per_rank < 1:
            raise ConfigError("parallelism.cp and parallelism.cp_chunks_per_rank must be >= 1")
        if self.pp < 1 or self.pp_stages_per_rank < 1:
            raise ConfigError("parallelism.pp and parallelism.pp_stages_per_rank must be >= 1")
        if self.pp_microbatches < 1 and self.pp_microbatches != -1:
            raise ConfigError("parallelism.pp_microbatches must be >= 1, or -1 (one per local batch of the step)")
        if self.comm_timeout_s <= 0:
            raise ConfigError(f"parallelism.comm_timeout_s = {self.comm_timeout_s} must be positive")
        if self.pp > 1:  # the schedules' own constraints on virtual stages
            multi = self.pp_schedule in ("Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")
            if not multi and self.pp_stages_per_rank != 1:
                raise ConfigError(f"parallelism.pp_schedule = '{self.pp_schedule}' runs one stage per rank; set "
                                  f"pp_stages_per_rank = 1 or use 'Interleaved1F1B' for virtual stages")
            if self.pp_schedule == "ZBVZeroBubble" and self.pp_stages_per_rank != 2:
                raise ConfigError("parallelism.pp_schedule = 'ZBVZeroBubble' needs pp_stages_per_rank = 2 "
                                  "(a V of stages)")
            if any(n < 1 for n in self.pp_layers_per_stage):
                raise ConfigError("parallelism.pp_layers_per_stage entries must be >= 1")


@dataclass
class ActivationCheckpoint(Section):
    mode: Literal["none", "full", "selective"] = "none"
    selective_every: int = 2  # selective: checkpoint every Nth block

    def check(self) -> None:
        if self.selective_every <= 0:
            raise ConfigError("activation_checkpoint.selective_every must be positive")


@dataclass
class Compile(Section):
    enable: bool = False  # torch.compile each transformer block


@dataclass
class Metrics(Section):
    log_freq: int = 1
    # host syncs (loss NaN check, metrics, SIGTERM agreement, same-FLOP milestones) run on the
    # log steps, checkpoint steps and the last step; > 0: also every sync_every steps
    sync_every: int = 0
    enable_tensorboard: bool = True
    enable_jsonl: bool = True
    gpu_peak_flops: float = -1.0  # -1: look the device up in the peak-FLOPs table
    flop_counter_steps: int = 1  # also measure FLOPs with torch.utils.flop_counter for the first N steps
    enable_wandb: bool = False  # Weights & Biases (pip install 'titan-jepa[wandb]'); WANDB_MODE=offline works
    wandb_project: str = "titan_jepa"
    wandb_run_name: str = ""  # "": job.name
    wandb_tags: list[str] = field(default_factory=list)

    def check(self) -> None:
        if self.log_freq <= 0:
            raise ConfigError("metrics.log_freq must be positive")
        if self.sync_every < 0:
            raise ConfigError("metrics.sync_every must be >= 0 (0: sync on the log steps only)")
        if self.enable_wandb:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise ConfigError("metrics.enable_wandb needs the wandb package: pip install 'titan-jepa[wandb]' "
                                  "(or set metrics.enable_wandb = false)")
            if not self.wandb_project:
                raise ConfigError("metrics.wandb_project must not be empty")


@dataclass
class Tokenizer(Section):
    kind: Literal["tiktoken", "hf"] = "tiktoken"  # Llama-3 tokenizer.model, or a Hugging Face tokenizer.json
    path: str = "assets/tokenizer/tokenizer.model"
    # "auto": the Llama-3 layout when the vocabulary has its header tokens, else the model's own
    # template; "llama3": the Llama-3 layout built on token ids (data/chat_template.py); "hf": the
    # model's Jinja template (data/hf_chat_template.py), e.g. Llama-3.2-Instruct's or SmolLM2's ChatML
    chat_template: Literal["auto", "llama3", "hf"] = "auto"
    # the template's file: a chat_template.jinja, a tokenizer_config.json or a .gguf; "": beside
    # tokenizer.path, chat_template.jinja, else tokenizer_config.json's "chat_template"
    chat_template_path: str = ""
    chat_template_date: str = "26 Jul 2024"  # "hf": the template's date_string ("Today Date"), fixed so data never depends on the day
    # "auto": tokens the objectives need that the vocabulary lacks (<|predictor_k|>, <|mask|>; Llama-3
    # uses its reserved slots) are appended, and <|pad|> when the pad token occurs in text; the
    # model's vocabulary grows to hold them. "never": a missing token is an error
    add_tokens: Literal["auto", "never"] = "auto"


@dataclass
class Data(Section):
    # "text" (documents), "chat" ({"messages": [...]}) or "pairs" ({"text", "code"} paraphrases)
    kind: Literal["text", "chat", "pairs"] = "text"
    path: str = "demo_data/corpus.jsonl"  # a local file, folder or glob; or hf:NAME for datasets
    hf_split: str = "train"
    text_field: str = "text"
    # chat: the tokens trained on; "all_but_eot": all, no <|eot_id|> targets (the reference as it ran)
    loss_on: Literal["assistant", "all", "all_but_eot"] = "assistant"
    bad_lines: Literal["skip", "fail"] = "skip"  # skip: a counted warning; fail: an error naming file:line
    max_sample_len: int = -1  # chat: longer samples are bad input; -1: training.seq_len
    shuffle_buffer: int = 0  # 0: files are read in order
    # chat/pairs: best-fit-decreasing packing over a look-ahead of this many samples (data/packing.py
    # BestFitPacker); 0 or 1: greedy, in stream order
    pack_buffer: int = 0
    # chat/pairs: a view segment (LLM-JEPA's Text/Code views, STP's mask views) whose first N >=
    # share_prefix unlabelled tokens repeat an earlier segment of its row (a template's header and
    # system prompt) reads them from there instead of running them again: the same losses and
    # gradients (float rounding aside), fewer tokens (data/packing.py add_sample). 0: off
    share_prefix: int = 8
    # "record": slot r reads the records a fixed hash of their number gives it; "file": whole files per slot
    shard_by: Literal["record", "file"] = "record"
    num_epochs: int = -1  # -1: loop forever

    def check(self) -> None:
        if self.pack_buffer < 0:
            raise ConfigError(f"data.pack_buffer = {self.pack_buffer} must be >= 0 (0 or 1: greedy packing)")
        if self.share_prefix < 0:
            raise ConfigError(f"data.share_prefix = {self.share_prefix} must be >= 0 (0: off)")
        if self.pack_buffer > 1 and self.kind == "text":
            raise ConfigError("data.pack_buffer packs chat and pairs samples; text documents are cut at row "
                              "ends and never pad, so set data.pack_buffer = 0 for data.kind = 'text'")


@dataclass
class Checkpoint(Section):
    enable: bool = False
    folder: str = "checkpoint"  # inside the run folder, unless absolute
    interval: int = 500
    keep_latest_k: int = 3  # 0 keeps all
    async_mode: bool = False
    load_step: int = -1  # -1: the latest, when one exists
    initial_load_path: str = ""  # a DCP folder or Hugging Face safetensors to start from
    initial_load_format: Literal["dcp", "hf"] = "dcp"
    model_only_export: bool = False  # write the final model weights alone
    export_dtype: Literal["float32", "bfloat16"] = "float32"
    same_flop: bool = False  # also save at the steps whose FLOPs match a next-token run's
    # manifest.json: each file's size and crc32 (rank 0 reads every file back once per save and
    # the newest once on resume, about 4 s per GB); false: sizes only, no read-back
    checksums: bool = True
    # "val/<metric>" (e.g. "val/loss", "val/accuracy"): the checkpoint of the step with the best
    # value is saved and kept beside the latest keep_latest_k ones (<ckpt>/best.json names it)
    keep_best: str = ""
    keep_best_mode: Literal["auto", "max", "min"] = "auto"  # "auto" (max for accuracy-like names, else min), "max" or "min"

    def check(self) -> None:
        if self.interval <= 0:
            raise ConfigError("checkpoint.interval must be positive")
        if self.keep_latest_k < 0:
            raise ConfigError("checkpoint.keep_latest_k must be >= 0 (0 keeps all)")
        if self.keep_best and not self.keep_best.startswith("val/"):
            raise ConfigError(f"checkpoint.keep_best = '{self.keep_best}' must name a validation metric, "
                              f"e.g. 'val/loss' or 'val/accuracy'")


@dataclass
class Validation(Section):
    """Held-out loss (and optional generation eval) every ``freq`` steps and at the last step."""

    enable: bool = False
    path: str = ""  # a file, folder, glob or hf:NAME, read as [data] (kind, text_field, ...) is
    hf_split: str = "validation"  # hf: datasets only
    freq: int = 100  # steps
    steps: int = -1  # global batches per validation; -1: the whole set (one pass)
    # generation eval: "" (off), "auto" (from the file name) or a scorer of titan_jepa/eval/scorers.py
    # (hellaswag and spider are not generation scorers: run python -m titan_jepa.eval)
    eval_scorer: Literal["", "auto", "exact", "startswith", "gsm8k", "nq_open"] = ""
    eval_path: str = ""  # its {"messages": [...]} test lines; "": validation.path
    eval_samples: int = 32  # the first N lines, shared out over the data-parallel ranks
    eval_max_new_tokens: int = 64
    eval_batch_size: int = 8  # prompts per generate call on one rank

    def check(self) -> None:
        if not self.enable:
            return
        if not self.path and not (self.eval_scorer and self.eval_path):
            raise ConfigError("validation.enable needs validation.path (held-out data: a file, folder, "
                              "glob or hf:NAME)")
        if self.freq <= 0:
            raise ConfigError(f"validation.freq = {self.freq} must be positive (steps)")
        if self.steps == 0 or self.steps < -1:
            raise ConfigError(f"validation.steps = {self.steps} must be positive, or -1 for the whole set")
        if self.eval_scorer and (self.eval_samples <= 0 or self.eval_max_new_tokens <= 0 or self.eval_batch_size <= 0):
            raise ConfigError("validation.eval_samples, eval_max_new_tokens and eval_batch_size must be positive")


@dataclass
class Jepa(Section):
    """LLM-JEPA: loss = gamma * next-token + lambda * d(Pred(Enc(Text)), Enc(Code))."""

    enable: bool = False
    lambda_: float = 1.0  # TOML key: lambda
    gamma: float = 1.0
    k: int = 1  # predictor tokens <|predictor_1|>..<|predictor_k|>; 0: Pred is identity
    distance: Literal["cosine", "l2", "mse", "infonce"] = "cosine"
    infonce_temperature: float = 0.07
    jepa_ratio: float = 1.0  # probability that a sample carries its views (loss dropout)
    views: Literal["separate", "shared_prefix"] = "separate"  # separate: the reference
    view_template: Literal["chat", "plain"] = "chat"  # chat: each view is a templated message; plain: raw tokens
    front_pred: bool = False  # predictor tokens before the Text content instead of after
    reverse_pred: bool = False  # predict Text from Code instead
    last_token: int = 0  # 0: Enc index computed from the view; < 0: offset from the view's end (reference)

    def check(self) -> None:
        if not self.enable:
            return
        if not 0 <= self.k <= 16:
            raise ConfigError(f"jepa.k = {self.k} must be in [0, 16] (predictor tokens)")
        if not 0.0 <= self.jepa_ratio <= 1.0:
            raise ConfigError(f"jepa.jepa_ratio = {self.jepa_ratio} must be in [0, 1]")
        if self.views == "shared_prefix" and (self.front_pred or self.reverse_pred):
            raise ConfigError("jepa.views = 'shared_prefix' reads Text inside the full sequence; "
                              "front_pred and reverse_pred need views = 'separate'")
        if self.last_token > 0:
            raise ConfigError("jepa.last_token must be 0 (computed index) or negative (offset from a view's end)")
        if self.infonce_temperature <= 0:
            raise ConfigError("jepa.infonce_temperature must be positive")


@dataclass
class Profiling(Section):
    """torch.profiler traces (and CUDA memory snapshots) of chosen steps, in the run folder."""

    enable_profiling: bool = False
    profile_steps: list[int] = field(default_factory=list)  # steps to trace; empty: start_step..
    start_step: int = 3  # used when profile_steps is empty: trace active_steps steps from here
    active_steps: int = 1
    save_traces_folder: str = "profile_traces"  # inside the run folder, unless absolute
    enable_memory_snapshot: bool = False  # CUDA only: allocator history dumped at the traced steps
    save_memory_snapshot_folder: str = "memory_snapshot"

    def check(self) -> None:
        if self.enable_profiling and (min(self.profile_steps, default=1) < 1 or self.start_step < 1
                                      or self.active_steps < 1):
            raise ConfigError("profiling.profile_steps, start_step and active_steps must be >= 1 (steps count from 1)")


@dataclass
class Float8(Section):
    """Float8 training of the transformer blocks' linear layers through torchao (CUDA, sm89+)."""

    enable: bool = False
    recipe: Literal["tensorwise", "rowwise", "rowwise_with_gw_hp"] = "tensorwise"


@dataclass
class Lora(Section):
    """LoRA adapters on the blocks' linear layers; everything else frozen (see titan_jepa/models/lora.py)."""

    enable: bool = False
    rank: int = 8
    alpha: float = 16.0  # the adapter output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter path only
    target_modules: list[Literal["wq", "wk", "wv", "wo", "w1", "w2", "w3"]] = field(
        default_factory=lambda: ["wq", "wk", "wv", "wo"])
    # with checkpoint.initial_load_path (the base model) set, training checkpoints hold the
    # trainable parameters alone (the adapters); on resume the frozen base is re-loaded from
    # initial_load_path. Without merge_on_export the model-only export holds the adapters alone
    save_adapters_only: bool = True
    # the model-only export folds the adapters into the base weights: plain Llama names, readable
    # by tools/convert_hf.py and the eval like any base model
    merge_on_export: bool = True

    def check(self) -> None:
        if not self.enable:
            return
        if self.rank <= 0:
            raise ConfigError(f"lora.rank = {self.rank} must be positive")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha = {self.alpha} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout = {self.dropout} must be in [0, 1)")
        if not self.target_modules:
            raise ConfigError("lora.target_modules is empty; name at least one of wq, wk, wv, wo, w1, w2, w3")


@dataclass
class Stp(Section):
    """Semantic Tube Prediction: a JEPA-style loss from one sequence's own hidden states."""

    enable: bool = False
    lambda_: float = 0.02  # TOML key: lambda
    mode: Literal["random_span", "e2e", "curvature", "random_span_mask"] = "random_span"
    spans_per_sample: int = 1  # spans per document (text) or per chat sample
    max_span_len: int = -1  # -1: no limit
    # "reference": s ~ U{0..N-1}, t ~ U{s+1..N}; "length": len ~ U{1..}, then s
    sampling: Literal["reference", "length"] = "reference"
    # "cosine_like": 2rp/(r^2+p^2); "jaccard_like": 1-|r-p|/(r+p)
    weighting: Literal["none", "cosine_like", "jaccard_like"] = "none"
    linear_predictor: bool = False  # a bias-free d x d map on the predicting side, trained with the model
    min_doc_len: int = 4  # text: documents (segments) shorter than this get no span

    def check(self) -> None:
        if not self.enable:
            return
        if self.spans_per_sample < 1:
            raise ConfigError("stp.spans_per_sample must be >= 1")
        if self.max_span_len == 0 or self.max_span_len < -1:
            raise ConfigError("stp.max_span_len must be positive, or -1 for no limit")


@dataclass
class JobConfig:
    job: Job = field(default_factory=Job)
    model: Model = field(default_factory=Model)
    training: Training = field(default_factory=Training)
    optimizer: Optimizer = field(default_factory=Optimizer)
    lr_scheduler: LRScheduler = field(default_factory=LRScheduler)
    parallelism: Parallelism = field(default_factory=Parallelism)
    activation_checkpoint: ActivationCheckpoint = field(default_factory=ActivationCheckpoint)
    compile: Compile = field(default_factory=Compile)
    metrics: Metrics = field(default_factory=Metrics)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    data: Data = field(default_factory=Data)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    validation: Validation = field(default_factory=Validation)
    jepa: Jepa = field(default_factory=Jepa)
    stp: Stp = field(default_factory=Stp)
    profiling: Profiling = field(default_factory=Profiling)
    float8: Float8 = field(default_factory=Float8)
    lora: Lora = field(default_factory=Lora)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def sections(self) -> list[Any]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @property
    def run_folder(self) -> Path:
        return Path(self.job.dump_folder) / self.job.name
