"""Typed configuration: one dataclass per TOML section, loading, CLI overrides, checks.

A run is described by a TOML file whose sections map one-to-one onto the dataclasses
below. ``--section.key value`` (or ``--section.key=value``) on the command line overrides
a value. Enumerated fields are typed ``Literal[...]``; the loader (``_coerce``) checks every
value against its field's type, from TOML and the CLI alike, so unknown sections or keys,
wrong types and values outside a field's choices are rejected with one line naming the
closest valid name, before any heavy work starts. Keys that moved (``MOVED``) or were
removed (``REMOVED``) name their new place or the reason. ``validate`` holds the range
and cross-field checks; code that reads a config may rely on all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import keyword
import math
import sys
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from titan_jepa.errors import ConfigError


@dataclass
class Job:
    name: str = "run"
    dump_folder: str = "./outputs"  # the run folder is dump_folder/name
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms on top of seeding


@dataclass
class Model:
    """The model shape: a base (the flavor) with any field below overriding it (-1, "" or
    unset: the base's). titan_jepa/model_config.py resolves it."""

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


@dataclass
class Training:
    steps: int = 50  # -1: as many as data.num_epochs of data give (counted before training)
    global_batch_size: int = 8  # sequences per optimizer step, summed over data-parallel ranks
    local_batch_size: int = 4  # sequences per micro-batch on one rank
    seq_len: int = 128
    max_norm: float = 1.0  # gradient clipping; <= 0 disables it
    mixed_precision_param: Literal["float32", "bfloat16"] = "float32"  # the FSDP param dtype
    mixed_precision_reduce: Literal["float32"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class Optimizer:
    lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    implementation: Literal["auto", "foreach", "fused", "for-loop"] = "auto"


@dataclass
class LRScheduler:
    warmup_steps: int = 10
    decay_type: Literal["linear", "cosine", "wsd", "constant"] = "cosine"
    decay_ratio: float = 0.2  # wsd only: the fraction of steps spent decaying at the end
    min_lr_ratio: float = 0.1  # the final lr as a fraction of optimizer.lr


@dataclass
class Parallelism:
    dp_replicate: int = 1  # HSDP replica groups (usually nodes)
    dp_shard: int = -1  # FSDP shard group size; -1: what remains of the world size
    tp: int = 1  # tensor (and sequence) parallel degree
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
    comm_timeout_s: int = 600
    # pipeline parallelism (titan_jepa/parallel/pipeline.py)
    pp: int = 1  # pipeline degree: the layers are split over pp stage groups
    pp_schedule: Literal["1F1B", "GPipe", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble"] = "1F1B"
    pp_microbatches: int = -1  # micro-batches per step; -1: global_batch / (local_batch x dp)
    pp_stages_per_rank: int = 1  # virtual stages per pp rank (interleaved and ZBV schedules: >= 2)
    pp_layers_per_stage: list[int] = field(default_factory=list)  # layers of each stage; empty: even split


@dataclass
class ActivationCheckpoint:
    mode: Literal["none", "full", "selective"] = "none"
    selective_every: int = 2  # selective: checkpoint every Nth block


@dataclass
class Compile:
    enable: bool = False  # torch.compile each transformer block


@dataclass
class Metrics:
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


@dataclass
class Tokenizer:
    kind: Literal["tiktoken", "hf"] = "tiktoken"  # Llama-3 tokenizer.model, or a Hugging Face tokenizer.json
    path: str = "assets/tokenizer/tokenizer.model"
    # "llama3": the Llama-3 layout built on token ids (data/chat_template.py); "hf": the Jinja
    # chat template of a tokenizer_config.json (data/hf_chat_template.py), e.g. Llama-3.2-Instruct's
    chat_template: Literal["llama3", "hf"] = "llama3"
    chat_template_path: str = ""  # "hf": its tokenizer_config.json; "": the one beside tokenizer.path
    chat_template_date: str = "26 Jul 2024"  # "hf": the template's date_string ("Today Date"), fixed so data never depends on the day


@dataclass
class Data:
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
    # "record": slot r reads records r, r+N, ...; "file": whole files per slot
    shard_by: Literal["record", "file"] = "record"
    num_epochs: int = -1  # -1: loop forever


@dataclass
class Checkpoint:
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


@dataclass
class Validation:
    """Held-out loss (and optional generation eval) every ``freq`` steps and at the last step."""

    enable: bool = False
    path: str = ""  # a file, folder, glob or hf:NAME, read as [data] (kind, text_field, ...) is
    hf_split: str = "validation"  # hf: datasets only
    freq: int = 100  # steps
    steps: int = -1  # global batches per validation; -1: the whole set (one pass)
    eval_scorer: str = ""  # generation eval: "" (off), "auto" or a scorer of titan_jepa/eval/scorers.py
    eval_path: str = ""  # its {"messages": [...]} test lines; "": validation.path
    eval_samples: int = 32  # the first N lines, shared out over the data-parallel ranks
    eval_max_new_tokens: int = 64
    eval_batch_size: int = 8  # prompts per generate call on one rank


@dataclass
class Jepa:
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


@dataclass
class Profiling:
    """torch.profiler traces (and CUDA memory snapshots) of chosen steps, in the run folder."""

    enable_profiling: bool = False
    profile_steps: list[int] = field(default_factory=list)  # steps to trace; empty: start_step..
    start_step: int = 3  # used when profile_steps is empty: trace active_steps steps from here
    active_steps: int = 1
    save_traces_folder: str = "profile_traces"  # inside the run folder, unless absolute
    enable_memory_snapshot: bool = False  # CUDA only: allocator history dumped at the traced steps
    save_memory_snapshot_folder: str = "memory_snapshot"


@dataclass
class Float8:
    """Float8 training of the transformer blocks' linear layers through torchao (CUDA, sm89+)."""

    enable: bool = False
    recipe: Literal["tensorwise", "rowwise", "rowwise_with_gw_hp"] = "tensorwise"


@dataclass
class Lora:
    """LoRA adapters on the blocks' linear layers; everything else frozen (see titan_jepa/lora.py)."""

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


@dataclass
class Stp:
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

    @property
    def run_folder(self) -> Path:
        return Path(self.job.dump_folder) / self.job.name


# Keys that moved to another section: an old config gets one line naming the new place.
MOVED: dict[tuple[str, str], tuple[str, str]] = {
    ("jepa", "same_flop"): ("checkpoint", "same_flop"),
}
# Keys that are gone, with the reason.
REMOVED: dict[tuple[str, str], str] = {
    ("optimizer", "name"): "the optimizer is always AdamW",
}


def choices(section: str, key: str) -> tuple[str, ...]:
    """The values an enumerated field (a ``Literal[...]``) may take, e.g. choices("data", "kind")."""
    typ = _field_types(_section_types()[section])[_field_name(key)]
    if typing.get_origin(typ) is list:
        (typ,) = typing.get_args(typ)
    if typing.get_origin(typ) is not Literal:
        raise KeyError(f"{section}.{key} is not an enumerated field")
    return typing.get_args(typ)


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(JobConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(JobConfig)}


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _coerce(value: Any, typ: Any, where: str, from_cli: bool) -> Any:
    """Convert ``value`` to ``typ``; CLI strings are parsed, TOML values are checked."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        last_err = None
        for arg in typing.get_args(typ):
            try:
                return _coerce(value, arg, where, from_cli)
            except ConfigError as e:
                last_err = e
        raise last_err  # type: ignore[misc]
    if typ is type(None):
        if value is None or (from_cli and str(value).lower() in ("none", "null")):
            return None
        raise ConfigError(f"{where}: expected none, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if from_cli and str(value).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(value).lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli:
            try:
                return int(str(value))
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
        elif from_cli:
            try:
                number = float(str(value))
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        nonfinite = " (NaN and infinity are not allowed)" if number is not None else ""
        raise ConfigError(f"{where}: expected a number, got {value!r}{nonfinite}")
    if typing.get_origin(typ) is Literal:
        options = typing.get_args(typ)
        if isinstance(value, str) and value in options:
            return value
        raise ConfigError(f"{where} = {value!r} is not one of {', '.join(options)}"
                          f"{_closest(str(value), list(options))}")
    if typ is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r} (quote it in TOML)")
    if typing.get_origin(typ) is list:
        (inner,) = typing.get_args(typ)
        if from_cli and isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, where, from_cli) for v in value]
    raise ConfigError(f"{where}: unsupported type {typ}")


def _field_name(key: str) -> str:
    """TOML keys that are Python keywords ("lambda") live in fields with a trailing "_"."""
    return key + "_" if keyword.iskeyword(key) else key


def _toml_key(name: str) -> str:
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


# keys an older config may still hold: ignored with a warning (FutureWarning: shown to
# users by default) that says what to do
DEPRECATED: dict[tuple[str, str], str] = {
    ("model", "name"): "model.name is ignored (the model is always Llama; its shape is model.flavor "
                       "plus the model.* fields): delete it from the config",
}


def _apply(cfg: JobConfig, section: str, key: str, value: Any, from_cli: bool, origin: str):
    if (section, key) in MOVED:
        new_section, new_key = MOVED[section, key]
        raise ConfigError(f"{origin}: [{section}] {key} moved to [{new_section}] {new_key}; rename it there")
    if (section, key) in REMOVED:
        raise ConfigError(f"{origin}: [{section}] {key} was removed ({REMOVED[section, key]}); delete it")
    key = _field_name(key)
    if (section, key) in DEPRECATED:
        warnings.warn(f"{origin}: {DEPRECATED[section, key]}", FutureWarning, stacklevel=3)
        return
    sections = _section_types()
    if section not in sections:
        raise ConfigError(
            f"{origin}: unknown section [{section}]{_closest(section, list(sections))}"
        )
    fields = _field_types(sections[section])
    if key not in fields:
        names = [_toml_key(f) for f in fields]
        raise ConfigError(
            f"{origin}: unknown key '{key}' in [{section}]{_closest(key, names)}"
        )
    where = f"{origin}: {section}.{key}"
    setattr(getattr(cfg, section), key, _coerce(value, fields[key], where, from_cli))


def parse_cli_overrides(argv: list[str]) -> tuple[str | None, list[tuple[str, str, str]]]:
    """Split argv into the --config path and (section, key, value) overrides."""
    config_path = None
    overrides = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: unexpected argument '{arg}'; use --section.key value")
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv) or (argv[i + 1].startswith("--") and not _is_number(argv[i + 1])):
                if name != "config" and "." in name:
                    # a bare flag: --compile.enable means true
                    overrides.append((*name.split(".", 1), "true"))
                    i += 1
                    continue
                raise ConfigError(f"command line: --{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name in ("config", "job.config_file"):
            config_path = value
        elif "." in name:
            section, key = name.split(".", 1)
            overrides.append((section, key, value))
        else:
            raise ConfigError(
                f"command line: '--{name}' is not --config or --section.key (e.g. --training.steps 10)"
            )
    return config_path, overrides


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_config(path: str | Path | None = None, overrides: list[tuple[str, str, str]] | None = None,
                extra: dict[str, dict[str, Any]] | None = None) -> JobConfig:
    """Build a JobConfig from a TOML file, then ``extra`` (a dict), then CLI overrides; check it."""
    cfg = JobConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass --config train_configs/<name>.toml")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid TOML (nested too deeply)") from None
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: top-level key '{section}' must be a [section]")
            for key, value in values.items():
                _apply(cfg, section, key, value, from_cli=False, origin=str(path))
    for section, values in (extra or {}).items():
        for key, value in values.items():
            _apply(cfg, section, key, value, from_cli=False, origin="config")
    for section, key, value in overrides or []:
        _apply(cfg, section, key, value, from_cli=True, origin="command line")
    validate(cfg)
    return cfg


def config_from_argv(argv: list[str] | None = None) -> JobConfig:
    path, overrides = parse_cli_overrides(sys.argv[1:] if argv is None else argv)
    return load_config(path, overrides)


def validate(cfg: JobConfig) -> None:
    """Cross-field and range checks that need no model or process group (the loader has
    already checked every type and enumerated value); parallel degrees are checked in
    parallel/mesh."""
    m = cfg.model
    for name in ("vocab_size", "max_seq_len", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of",
                 "rope_original_max_seq_len"):
        if getattr(m, name) <= 0 and getattr(m, name) != -1:
            raise ConfigError(f"model.{name} = {getattr(m, name)} must be positive (or -1: the flavor's)")
    for name in ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
        if getattr(m, name) <= 0 and getattr(m, name) != -1:
            raise ConfigError(f"model.{name} = {getattr(m, name)} must be positive (or -1: the flavor's)")
    if m.ffn_dim_multiplier < 0 and m.ffn_dim_multiplier != -1:
        raise ConfigError(f"model.ffn_dim_multiplier = {m.ffn_dim_multiplier} must be positive, 0 (none) "
                          f"or -1 (the flavor's)")
    t = cfg.training
    if t.steps == -1 and cfg.data.num_epochs <= 0:
        raise ConfigError("training.steps = -1 (train for whole epochs) needs data.num_epochs > 0")
    for name in ("steps", "global_batch_size", "local_batch_size", "seq_len"):
        if getattr(t, name) <= 0 and not (name == "steps" and t.steps == -1):
            raise ConfigError(f"training.{name} must be positive, got {getattr(t, name)}")
    if cfg.data.pack_buffer < 0:
        raise ConfigError(f"data.pack_buffer = {cfg.data.pack_buffer} must be >= 0 (0 or 1: greedy packing)")
    if cfg.data.pack_buffer > 1 and cfg.data.kind == "text":
        raise ConfigError("data.pack_buffer packs chat and pairs samples; text documents are cut at row "
                          "ends and never pad, so set data.pack_buffer = 0 for data.kind = 'text'")
    if cfg.metrics.log_freq <= 0:
        raise ConfigError("metrics.log_freq must be positive")
    if cfg.metrics.sync_every < 0:
        raise ConfigError("metrics.sync_every must be >= 0 (0: sync on the log steps only)")
    if cfg.lr_scheduler.warmup_steps < 0:
        raise ConfigError("lr_scheduler.warmup_steps must be >= 0")
    if not 0.0 <= cfg.lr_scheduler.min_lr_ratio <= 1.0:
        raise ConfigError("lr_scheduler.min_lr_ratio must be in [0, 1]")
    if not 0.0 <= cfg.lr_scheduler.decay_ratio <= 1.0:
        raise ConfigError("lr_scheduler.decay_ratio must be in [0, 1]")
    if cfg.activation_checkpoint.selective_every <= 0:
        raise ConfigError("activation_checkpoint.selective_every must be positive")
    p = cfg.parallelism
    if p.dp_replicate < 1 or p.tp < 1 or (p.dp_shard < 1 and p.dp_shard != -1):
        raise ConfigError("parallelism degrees must be >= 1 (dp_shard may be -1: the rest of the world size)")
    if p.pp < 1 or p.pp_stages_per_rank < 1:
        raise ConfigError("parallelism.pp and parallelism.pp_stages_per_rank must be >= 1")
    if p.pp_microbatches < 1 and p.pp_microbatches != -1:
        raise ConfigError("parallelism.pp_microbatches must be >= 1, or -1 (one per local batch of the step)")
    if p.pp > 1:
        # the schedules' own constraints on virtual stages
        multi = p.pp_schedule in ("Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble")
        if not multi and p.pp_stages_per_rank != 1:
            raise ConfigError(f"parallelism.pp_schedule = '{p.pp_schedule}' runs one stage per rank; set "
                              f"pp_stages_per_rank = 1 or use 'Interleaved1F1B' for virtual stages")
        if p.pp_schedule == "ZBVZeroBubble" and p.pp_stages_per_rank != 2:
            raise ConfigError("parallelism.pp_schedule = 'ZBVZeroBubble' needs pp_stages_per_rank = 2 (a V of stages)")
        if any(n < 1 for n in p.pp_layers_per_stage):
            raise ConfigError("parallelism.pp_layers_per_stage entries must be >= 1")
    if cfg.checkpoint.interval <= 0:
        raise ConfigError("checkpoint.interval must be positive")
    j = cfg.jepa
    if j.enable:
        if cfg.data.kind == "text":
            raise ConfigError("jepa.enable needs two views per sample: set data.kind = 'chat' "
                              "({\"messages\": [...]} lines) or 'pairs' ({\"text\", \"code\"} lines)")
        if not 0 <= j.k <= 16:
            raise ConfigError(f"jepa.k = {j.k} must be in [0, 16] (predictor tokens)")
        if not 0.0 <= j.jepa_ratio <= 1.0:
            raise ConfigError(f"jepa.jepa_ratio = {j.jepa_ratio} must be in [0, 1]")
        if j.views == "shared_prefix" and (j.front_pred or j.reverse_pred):
            raise ConfigError("jepa.views = 'shared_prefix' reads Text inside the full sequence; "
                              "front_pred and reverse_pred need views = 'separate'")
        if j.last_token > 0:
            raise ConfigError("jepa.last_token must be 0 (computed index) or negative (offset from a view's end)")
        if j.infonce_temperature <= 0:
            raise ConfigError("jepa.infonce_temperature must be positive")
    lo = cfg.lora
    if lo.enable:
        if lo.rank <= 0:
            raise ConfigError(f"lora.rank = {lo.rank} must be positive")
        if lo.alpha <= 0:
            raise ConfigError(f"lora.alpha = {lo.alpha} must be positive")
        if not 0.0 <= lo.dropout < 1.0:
            raise ConfigError(f"lora.dropout = {lo.dropout} must be in [0, 1)")
        if not lo.target_modules:
            raise ConfigError(f"lora.target_modules is empty; name at least one of "
                              f"{', '.join(choices('lora', 'target_modules'))}")
    if cfg.float8.enable and cfg.lora.enable:
        raise ConfigError("float8.enable with lora.enable would convert the LoRA layers and drop their "
                          "adapters; disable one of them")
    st = cfg.stp
    if st.enable:
        if cfg.data.kind == "pairs":
            raise ConfigError("[stp] works on data.kind = 'text' or 'chat'; paraphrase pairs use [jepa]")
        if st.mode in ("e2e", "random_span_mask") and cfg.data.kind == "text":
            raise ConfigError(f"stp.mode = '{st.mode}' needs two views: use data.kind = 'chat', "
                              "or stp.mode = 'random_span' / 'curvature' on plain text")
        if st.spans_per_sample < 1:
            raise ConfigError("stp.spans_per_sample must be >= 1")
        if st.max_span_len == 0 or st.max_span_len < -1:
            raise ConfigError("stp.max_span_len must be positive, or -1 for no limit")
        if st.mode == "random_span_mask" and j.enable:
            raise ConfigError("stp.mode = 'random_span_mask' adds its own views; disable jepa.enable or pick another mode")
    if cfg.checkpoint.keep_latest_k < 0:
        raise ConfigError("checkpoint.keep_latest_k must be >= 0 (0 keeps all)")
    _validate_tracking(cfg)
    pr = cfg.profiling
    if pr.enable_profiling and (min(pr.profile_steps, default=1) < 1 or pr.start_step < 1 or pr.active_steps < 1):
        raise ConfigError("profiling.profile_steps, start_step and active_steps must be >= 1 (steps count from 1)")


def _validate_tracking(cfg: JobConfig) -> None:
    """[validation], checkpoint.keep_best, wandb."""
    from titan_jepa.eval.scorers import SCORERS

    v = cfg.validation
    if v.enable:
        if not v.path and not (v.eval_scorer and v.eval_path):
            raise ConfigError("validation.enable needs validation.path (held-out data: a file, folder, "
                              "glob or hf:NAME)")
        if v.freq <= 0:
            raise ConfigError(f"validation.freq = {v.freq} must be positive (steps)")
        if v.steps == 0 or v.steps < -1:
            raise ConfigError(f"validation.steps = {v.steps} must be positive, or -1 for the whole set")
        if v.eval_scorer:
            if v.eval_scorer not in ("auto",) + SCORERS or v.eval_scorer in ("hellaswag", "spider"):
                gen = [s for s in SCORERS if s not in ("hellaswag", "spider")]
                raise ConfigError(f"validation.eval_scorer = '{v.eval_scorer}' is not one of auto, "
                                  f"{', '.join(gen)} (hellaswag and spider: run python -m titan_jepa.eval)")
            if v.eval_samples <= 0 or v.eval_max_new_tokens <= 0 or v.eval_batch_size <= 0:
                raise ConfigError("validation.eval_samples, eval_max_new_tokens and eval_batch_size must be positive")
            if cfg.parallelism.tp > 1 or cfg.parallelism.pp > 1:
                raise ConfigError("validation.eval_scorer (generation in the loop) needs parallelism.tp = 1 "
                                  "and pp = 1; evaluate TP/PP runs' checkpoints with python -m titan_jepa.eval")
    c = cfg.checkpoint
    if c.keep_best:
        if not c.keep_best.startswith("val/"):
            raise ConfigError(f"checkpoint.keep_best = '{c.keep_best}' must name a validation metric, "
                              f"e.g. 'val/loss' or 'val/accuracy'")
        if not (c.enable and v.enable):
            raise ConfigError("checkpoint.keep_best needs checkpoint.enable = true and validation.enable = true")
        logged = set()
        if v.path:
            logged |= {"val/loss", "val/batches"}
            if cfg.jepa.enable or cfg.stp.enable:
                logged.add("val/ntp_loss")
            if cfg.jepa.enable:
                logged |= {"val/jepa_loss", "val/jepa_cos", "val/jepa_frac"}
            if cfg.stp.enable:
                logged.add("val/stp_loss")
        if v.eval_scorer:
            logged.add("val/accuracy")
        if c.keep_best not in logged:
            raise ConfigError(f"checkpoint.keep_best = '{c.keep_best}' is not logged by this run's validation; "
                              f"choose one of {', '.join(sorted(logged))}{_closest(c.keep_best, sorted(logged))}")
    m = cfg.metrics
    if m.enable_wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("metrics.enable_wandb needs the wandb package: pip install 'titan-jepa[wandb]' "
                              "(or set metrics.enable_wandb = false)")
        if not m.wandb_project:
            raise ConfigError("metrics.wandb_project must not be empty")


def keep_best_mode(c: Checkpoint) -> str:
    """"max" or "min" for checkpoint.keep_best (auto: max for accuracy-like names)."""
    if c.keep_best_mode != "auto":
        return c.keep_best_mode
    name = c.keep_best.lower()
    return "max" if any(w in name for w in ("acc", "cos", "score", "match")) else "min"


def write_config(cfg: JobConfig, folder: Path) -> Path:
    """Write the resolved config (JSON and TOML) to the run folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    lines = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is not None:  # TOML has no null: an unset optional field stays unset
                lines.append(f"{_toml_key(k)} = {json.dumps(v)}")
        lines.append("")
    out = folder / "config.toml"
    out.write_text("\n".join(lines))
    return out
