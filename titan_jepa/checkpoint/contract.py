"""The resume contract: what a checkpoint records so that a resume is honest.

Every checkpoint's train_state.json holds ``contract`` (what a resume must match) and
``config`` (the whole resolved config of the run that saved it). A resume compares:

- **must match** (else ``ResumeMismatch``, one line: ``<key>: <saved> -> <now>`` and the two ways
  on): the model shape (ModelArgs, but the attention backend), the tokenizer's identity (a
  hash of its file and of its chat template, its special and pad ids, the tokens this stack
  added), the rows (``training.seq_len``, global and local batch size: the loader's state is
  per batch slot), the data sources and their order (every ``[data]`` key but bad_lines), the
  seed, and the objectives and adapters with their token layouts (``[jepa]``, ``[stp]``,
  ``[lora]``) and ``tokenizer.kind / chat_template / add_tokens``;
- **may change** (``CHANGEABLE``): the optimizer and the learning-rate schedule, the number
  of steps, clipping, logging, checkpointing intervals, validation, profiling, the parallel
  layout (checkpoints reshard), activation checkpointing, compile, paths. They take effect (the
  optimizer's hyperparameters and the schedule are re-derived from the new config at the
  resumed step), are logged once as a change, and the run folder keeps the config each
  segment of the run used (``config.until-step-N.toml`` beside the current ``config.toml``).

Checkpoints written before contracts existed resume with a warning that nothing was checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict

from titan_jepa.errors import CheckpointError

# [section] or section.key prefixes that may change between a run and its resume
CHANGEABLE = (
    "optimizer", "lr_scheduler", "training.steps", "training.max_norm", "training.mixed_precision_param",
    "training.mixed_precision_reduce", "training.device", "metrics", "checkpoint", "validation", "profiling",
    "parallelism", "activation_checkpoint", "compile", "float8", "job.name", "job.dump_folder",
    "job.deterministic", "model", "tokenizer.path", "tokenizer.chat_template_path", "data.bad_lines",
)


class ResumeMismatch(CheckpointError):
    """A resume that cannot be honest: a setting the checkpoint depends on changed."""


def flatten(cfg_dict: dict) -> dict[str, object]:
    """{"section.key": value} of a config dict."""
    return {f"{s}.{k}": v for s, values in cfg_dict.items() for k, v in values.items()}


def changeable(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in CHANGEABLE)


def tokenizer_identity(tokens: dict | None, template_source: str | None) -> dict:
    """What identifies a tokenizer: its file's hash, its template's, its ids, its added tokens."""
    if not tokens:
        return {}
    out = {k: tokens.get(k) for k in ("sha256", "vocab_size", "added", "bos_id", "eos_id", "eot_id", "pad_id")}
    out["template_sha256"] = hashlib.sha256(template_source.encode()).hexdigest() if template_source else None
    return out


def make_contract(cfg, model_args, tokens: dict | None, template_source: str | None) -> dict:
    """The must-match record of the run (JSON-able)."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items() if not changeable(k)}
    shape = {k: v for k, v in asdict(model_args).items() if k != "attn_backend"}
    return {"config": flat, "model": shape, "tokenizer": tokenizer_identity(tokens, template_source)}


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:28] + "..." + text[-28:]


def check_contract(saved: dict, now: dict, path) -> None:
    """Raise ResumeMismatch naming the first differing must-match key (and how many more)."""
    diffs = []
    for part, label in (("model", "model shape"), ("tokenizer", "tokenizer"), ("config", None)):
        a, b = saved.get(part, {}), now.get(part, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                name = key if label is None else f"{label}: {key}"
                diffs.append(f"{name}: {_short(a.get(key))} -> {_short(b.get(key))}")
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise ResumeMismatch(f"the checkpoint {path} cannot resume this run: {diffs[0]}{more}; resume with the "
                             f"saved setting, or give the run a new --job.name, or start fresh from its weights "
                             f"with --checkpoint.initial_load_path {path}")


def changes(saved_config: dict, cfg) -> dict[str, tuple]:
    """{key: (saved, now)} of the changeable settings that differ from the saved run's."""
    a, b = flatten(saved_config), flatten(cfg.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if changeable(k) and a.get(k) != b.get(k)}
