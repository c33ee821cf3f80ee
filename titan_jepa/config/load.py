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
    """Every section's own checks (its ``check()``, beside its dataclass), then the checks
    that need two sections. The loader has already checked every type and enumerated value;
    parallel degrees against the world and the model are checked in parallel/mesh."""
    for section in cfg.sections():
        section.check()
    cross_checks(cfg)


def cross_checks(cfg: JobConfig) -> None:
    """The checks that read more than one section."""
    t, d, j, st, v = cfg.training, cfg.data, cfg.jepa, cfg.stp, cfg.validation
    if t.steps == -1 and d.num_epochs <= 0:
        raise ConfigError("training.steps = -1 (train for whole epochs) needs data.num_epochs > 0")
    if j.enable and d.kind == "text":
        raise ConfigError("jepa.enable needs two views per sample: set data.kind = 'chat' "
                          "({\"messages\": [...]} lines) or 'pairs' ({\"text\", \"code\"} lines)")
    if st.enable and d.kind == "pairs":
        raise ConfigError("[stp] works on data.kind = 'text' or 'chat'; paraphrase pairs use [jepa]")
    if st.enable and st.mode in ("e2e", "random_span_mask") and d.kind == "text":
        raise ConfigError(f"stp.mode = '{st.mode}' needs two views: use data.kind = 'chat', "
                          "or stp.mode = 'random_span' / 'curvature' on plain text")
    if st.enable and st.mode == "random_span_mask" and j.enable:
        raise ConfigError("stp.mode = 'random_span_mask' adds its own views; disable jepa.enable or pick another mode")
    if cfg.compile.enable and cfg.parallelism.tp > 1 and t.device == "cpu":
        # torch 2.13 / 2.14 on CPU: the first backward fails inside DTensor's redistribute
        # ("'Tensor' object has no attribute '_local_tensor'") once the blocks are compiled
        raise ConfigError("compile.enable with parallelism.tp > 1 is not supported on the CPU (torch's DTensor "
                          "backward fails under torch.compile there); set --compile.enable false or tp = 1 for "
                          "CPU runs")
    if cfg.float8.enable and cfg.lora.enable:
        raise ConfigError("float8.enable with lora.enable would convert the LoRA layers and drop their "
                          "adapters; disable one of them")
    if v.enable and v.eval_scorer and (cfg.parallelism.tp > 1 or cfg.parallelism.pp > 1):
        raise ConfigError("validation.eval_scorer (generation in the loop) needs parallelism.tp = 1 "
                          "and pp = 1; evaluate TP/PP runs' checkpoints with python -m titan_jepa.eval")
    if cfg.checkpoint.keep_best and not (cfg.checkpoint.enable and v.enable):
        raise ConfigError("checkpoint.keep_best needs checkpoint.enable = true and validation.enable = true")


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
    out = folder / "config.toml"
    out.write_text(toml_text(cfg.to_dict()))
    return out


def toml_text(cfg_dict: dict) -> str:
    """A config dict ({section: {key: value}}) as TOML text."""
    lines = []
    for section, values in cfg_dict.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            if v is not None:  # TOML has no null: an unset optional field stays unset
                lines.append(f"{_toml_key(k)} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)
