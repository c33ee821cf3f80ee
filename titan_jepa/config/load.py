"""Typed configuration: loading, CLI overrides, checks (the dataclasses of the sections are
titan_jepa/config/sections.py, re-exported here).

A run is described by a TOML file whose sections map one-to-one onto the dataclasses
of config_sections.py. ``--section.key value`` (or ``--section.key=value``) on the command line overrides
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
from pathlib import Path
from typing import Any, Literal

from titan_jepa.config.sections import Checkpoint, JobConfig
from titan_jepa.errors import ConfigError


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
