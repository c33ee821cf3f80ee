"""Model weights from any saved form, through one path: training (checkpoint.py), the eval
(eval/run.py) and the converter (tools/convert_hf.py) all load here.

Formats (``resolve``):
  * ``dcp``: a torch.distributed.checkpoint folder (has ``.metadata``): a training
    checkpoint ``step-N`` ("model." and "optimizer." entries; the optimizer is not read
    here), a model-only export or seed checkpoint ("model." entries), or a torchtitan-style
    folder with top-level keys;
  * ``hf``: a Hugging Face Llama folder (config.json + model.safetensors, or shards with
    model.safetensors.index.json);
  * a folder of ``step-N`` checkpoints stands for its latest complete one.

Every checkpoint, export and seed checkpoint this project writes holds ``model_args.json``
(the resolved ModelArgs, ``write_model_args``), so the eval and ``convert_hf.py --to-hf``
know the model shape without a config; a Hugging Face folder has its config.json.

Loading is strict: the saved entries must equal the model's (names and shapes), except
for the keys a caller allows to be missing (the LoRA adapters when a base model is loaded
into a model with adapters: they keep their init). Any difference is one CheckpointError
line naming the missing / unexpected keys or the first shape mismatch. The model may be
sharded (FSDP2 / TP DTensors): DCP reads each rank's shards; Hugging Face files are read
on rank 0 and broadcast.

A grown vocabulary (the tokenizer appended the method's tokens, data/tokenizer.py): base
weights with fewer embedding (and untied output) rows than the model load into the first
rows, and each new row starts at the mean of the saved rows of its matrix (``grow_vocab``;
transformers' ``resize_token_embeddings`` starts them at the mean too, plus a 1e-9-scaled
covariance sample). Such weights are read whole on rank 0 and broadcast, as HF ones are.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

import titan_jepa.checkpoint.hf as hf_convert
import titan_jepa.checkpoint.torchtitan_names as torchtitan_names
from titan_jepa.config import JobConfig, Lora
from titan_jepa.checkpoint.files import quiet_dcp
from titan_jepa.errors import CheckpointError
from titan_jepa.parallel.collectives import rank_world
from titan_jepa.models.lora import apply_lora, is_lora_name, merge_lora
from titan_jepa.config.model import model_args_from_config
from titan_jepa.models.llama import ModelArgs, build_model

logger = logging.getLogger("titan_jepa")

STEP_RE = re.compile(r"^step-(\d+)$")
MODEL_ARGS = "model_args.json"
TOKENS = "tokens.json"
# the shape fields a Hugging Face config.json must agree on with the model (each is the
# [model] field of the same name, but ffn_hidden_dim: multiple_of / ffn_dim_multiplier)
_SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "ffn_hidden_dim", "tie_embeddings")


# ---- where and what --------------------------------------------------------------------
def complete_checkpoints(folder: Path) -> dict[int, Path]:
    """{step: path} of the finished checkpoints in ``folder`` (unfinished ones end in .tmp)."""
    found = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = STEP_RE.match(p.name)
            if m and (p / ".metadata").is_file():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def is_hf_folder(path: Path) -> bool:
    return (path / hf_convert.CONFIG).is_file() and (
        (path / hf_convert.SAFE_WEIGHTS).is_file() or (path / hf_convert.SAFE_INDEX).is_file())


def resolve(path: str | Path, what: str = "--checkpoint") -> tuple[str, Path]:
    """("dcp" | "hf", folder) of a weights path (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} '{path}' does not exist")
    if (path / ".metadata").is_file():
        return "dcp", path
    if is_hf_folder(path):
        return "hf", path
    found = complete_checkpoints(path)
    if found:
        return "dcp", found[max(found)]
    raise CheckpointError(f"{what} '{path}' is neither a DCP folder (.metadata), a folder of step-N "
                          f"checkpoints, nor a Hugging Face folder (config.json + model.safetensors)")


def write_model_args(folder: Path, args: ModelArgs, tokens: dict | None = None) -> None:
    """The resolved model shape, next to the weights (rank 0 calls it), and ``tokens``
    (the tokenizer's ``tokens_record``: its file, special ids and added tokens) as tokens.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MODEL_ARGS).write_text(json.dumps(args.to_dict(), indent=2) + "\n")
    if tokens is not None:
        (folder / TOKENS).write_text(json.dumps(tokens, indent=2) + "\n")


def read_tokens(folder: Path) -> dict | None:
    """The tokens.json written beside weights by ``write_model_args``, or None."""
    try:
        return json.loads((folder / TOKENS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"'{folder / TOKENS}' is unreadable ({e}); restore it from the run folder") from None


def read_model_args(kind: str, path: Path) -> ModelArgs | None:
    """The shape saved with the weights: model_args.json (ours) or config.json (HF); None
    for a DCP folder without the side file (one written elsewhere, or by an older version)."""
    try:
        if kind == "hf":
            return hf_convert.model_args_from_hf_config(hf_convert.load_hf_config(path))
        if (path / MODEL_ARGS).is_file():
            return ModelArgs.from_dict(json.loads((path / MODEL_ARGS).read_text()))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': cannot read the model shape ({e})") from None
    return None


def dcp_entries(path: Path) -> tuple[str, dict[str, TensorStorageMetadata]]:
    """(key prefix, {model key: tensor metadata}) of a DCP folder: "model." for ours, ""
    for top-level keys (torchtitan's model-only folders), optimizer entries left out."""
    md = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = "model." if any(k.startswith("model.") for k in md) else ""
    # torchtitan after v0.2 names qkv_linear.w{q,k,v} and lm_head: reported in our names
    return prefix, torchtitan_names.rename_to_ours(
        {k[len(prefix):]: v for k, v in md.items()
         if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)
         and not (prefix == "" and k.startswith("optimizer."))})


def _load_saved_names(path: Path, prefix: str, sd: dict[str, torch.Tensor], no_dist: bool) -> dict:
    """dcp.load ``sd`` (our names) from ``path``, whose tensors may carry torchtitan's later
    names; returns ``sd`` filled, in our names."""
    name = torchtitan_names.to_new if torchtitan_names.dcp_naming(path) == torchtitan_names.NEW else str
    theirs = {name(k): v for k, v in sd.items()}
    with quiet_dcp():
        dcp.load({"model": theirs} if prefix else theirs, checkpoint_id=str(path), no_dist=no_dist)
    return {k: theirs[name(k)] for k in sd}


def check_entries(saved: dict[str, tuple], want: dict[str, tuple], path: Path, what: str,
                  may_lack: Callable[[str], bool] = lambda k: False, stage_part: bool = False) -> set[str]:
    """Compare saved {key: shape} with the model's; returns the keys both hold. Keys the
    model has but the weights lack are an error unless ``may_lack(key)``. ``stage_part``:
    the model is this rank's pipeline stages (parallelism.pp > 1), so the other saved keys
    belong to other stages."""
    missing = [k for k in want if k not in saved and not may_lack(k)]
    unexpected = [] if stage_part else [k for k in saved if k not in want]
    shapes = [f"{k} {saved[k]} vs model {want[k]}" for k in want if k in saved and saved[k] != want[k]]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape {shapes[0]}{' (and more)' if len(shapes) > 1 else ''}")
        raise CheckpointError(f"{what} '{path}' was saved from a different model ({'; '.join(parts)}); "
                              f"use the model.flavor / model.* settings it was saved with "
                              f"(its model_args.json or the run's config.toml)")
    return set(saved) & set(want)


def check_dcp(path: Path, model_sd: dict, what: str, may_lack: Callable[[str], bool] = lambda k: False,
              stage_part: bool = False) -> set[str]:
    """check_entries of a DCP folder against a (possibly sharded) model state dict."""
    _, saved = dcp_entries(path)
    return check_entries({k: tuple(v.size) for k, v in saved.items()},
                         {k: tuple(v.shape) for k, v in model_sd.items()}, path, what, may_lack, stage_part)


# ---- loading into a model ----------------------------------------------------------------
def load_dcp(model: torch.nn.Module, path: Path, what: str,
             may_lack: Callable[[str], bool] = is_lora_name, stage_part: bool = False,
             grow: bool = False) -> set[str]:
    """Load a DCP folder's model entries into ``model`` (plain or sharded; every rank calls
    it); keys ``may_lack`` allows to be absent keep their values. Returns the keys loaded."""
    model_sd = get_model_state_dict(model)
    _, saved = dcp_entries(path)
    if grow and _fewer_vocab_rows({k: tuple(v.size) for k, v in saved.items()},
                                                    {k: tuple(v.shape) for k, v in model_sd.items()}):
        if stage_part:
            raise CheckpointError(f"{what} '{path}' has a smaller vocabulary than the model (the tokenizer "
                                  f"added tokens); grow it with a pp = 1 run first (its model-only export)")
        def read():
            sd = read_dcp_state_dict(path)
            check_entries({k: tuple(v.shape) for k, v in grow_vocab(sd, model.args.vocab_size,
                                                                      model.args.tie_embeddings).items()},
                          {k: tuple(v.shape) for k, v in model_sd.items()}, path, what, may_lack)
            return sd

        return _load_full_state(model, read, path, what)
    present = check_dcp(path, model_sd, what, may_lack, stage_part)
    model_sd = {k: v for k, v in model_sd.items() if k in present}
    prefix, _ = dcp_entries(path)
    model_sd = _load_saved_names(path, prefix, model_sd, no_dist=rank_world()[1] == 1)
    set_model_state_dict(model, model_sd, options=StateDictOptions(strict=False))
    return present


def _check_hf_shape(model_args: ModelArgs, path: Path, what: str, grow: bool = False) -> ModelArgs:
    """The folder's shape, checked against the model's (with ``grow``, a smaller vocabulary
    grows); returns it."""
    saved = read_model_args("hf", path)
    diff = [f for f in _SHAPE_FIELDS if getattr(saved, f) != getattr(model_args, f)
            and not (grow and f == "vocab_size" and saved.vocab_size < model_args.vocab_size)]
    if diff:
        have = ", ".join(f"{f} {getattr(saved, f)}" for f in diff)
        mine = ", ".join(f"{f} {getattr(model_args, f)}" for f in diff)
        fix = ", ".join(f"model.{f} = {json.dumps(getattr(saved, f))}" for f in diff if f != "ffn_hidden_dim")
        if "ffn_hidden_dim" in diff:
            fix += (", " if fix else "") + "model.multiple_of / ffn_dim_multiplier giving it"
        raise CheckpointError(f"{what} '{path}' (hf): its config.json has {have} but the model has {mine}; "
                              f"set {fix}")
    return saved


VOCAB_KEYS = ("tok_embeddings.weight", "output.weight")


def grow_vocab(sd: dict[str, torch.Tensor], vocab_size: int, tied: bool) -> dict[str, torch.Tensor]:
    """``sd`` (full tensors) with its embedding and untied output matrices grown to
    ``vocab_size`` rows, each new row the mean of the saved rows (float64 sums)."""
    sd = dict(sd)
    for key in VOCAB_KEYS:
        w = sd.get(key)
        if w is not None and w.shape[0] < vocab_size and not (tied and key == "output.weight"):
            mean = w.double().mean(0, keepdim=True).to(w.dtype)
            sd[key] = torch.cat([w, mean.expand(vocab_size - w.shape[0], -1)])
    if tied and "tok_embeddings.weight" in sd:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    return sd


def _load_full_state(model: torch.nn.Module, read: Callable[[], dict[str, torch.Tensor]], path: Path,
                     what: str, every_rank: bool = False) -> set[str]:
    """Rank 0 reads whole tensors in our names (``read()``, may raise CheckpointError), the
    vocabulary grows to the model's, set_model_state_dict broadcasts and shards. Keys the
    weights lack (LoRA adapters) keep their init. Every rank calls it; returns the keys loaded.
    ``every_rank`` (pipeline stages, which hold different parts of the model): each rank reads
    the files itself and keeps its own stage's tensors; nothing is broadcast."""
    dtypes = {k: v.dtype for k, v in get_model_state_dict(model).items()}
    sd, err = {}, None
    if every_rank or rank_world()[0] == 0:
        try:
            sd = grow_vocab(read(), model.args.vocab_size, model.args.tie_embeddings)
            sd = {k: v.to(dtypes[k]) for k, v in sd.items() if k in dtypes or not every_rank}
        except CheckpointError as e:
            err = str(e)
        except (OSError, KeyError, ValueError) as e:
            err = f"{what} '{path}': " + (str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    if rank_world()[1] > 1:
        box = [err]
        dist.broadcast_object_list(box, src=0)  # rank 0's error (every rank reads the same files)
        err = box[0]
    if err is not None:
        raise CheckpointError(err)
    set_model_state_dict(model, sd, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=rank_world()[1] > 1 and not every_rank, strict=False))
    return set(dtypes) - {k for k in dtypes if is_lora_name(k)}


def load_hf(model: torch.nn.Module, path: Path, what: str, grow: bool = False, stage_part: bool = False) -> set[str]:
    """Load a Hugging Face folder into ``model`` (plain or sharded; every rank calls it):
    rank 0 reads the files, set_model_state_dict broadcasts and shards. The model's LoRA
    adapters (absent from a HF base model) keep their init. ``grow``: the model's vocabulary
    grew (the tokenizer added tokens), so fewer saved rows are completed (``grow_vocab``).
    Returns the keys loaded."""
    def read():
        saved = _check_hf_shape(model.args, path, what, grow)
        return hf_convert.from_hf_state_dict(hf_convert.load_hf_safetensors(path), saved)

    return _load_full_state(model, read, path, f"{what} (hf)", every_rank=stage_part)


def _fewer_vocab_rows(saved: dict[str, tuple], want: dict[str, tuple]) -> bool:
    """Whether saved weights differ from the model only by fewer vocabulary rows."""
    grown = [k for k in VOCAB_KEYS if k in saved and k in want and saved[k][1:] == want[k][1:]
             and saved[k][0] < want[k][0]]
    return bool(grown) and all(saved[k] == want[k] for k in want if k in saved and k not in grown)


def load_weights(model: torch.nn.Module, path: str | Path, what: str, fmt: str = "auto",
                 stage_part: bool = False, grow: bool = False) -> set[str]:
    """Base weights from ``path`` (DCP or HF; ``fmt`` "auto" detects it) into ``model``;
    LoRA adapters the weights lack keep their init. Returns the keys loaded."""
    path = Path(path)
    if fmt == "dcp" and not (path / ".metadata").is_file():
        raise CheckpointError(f"{what} '{path}' is not a DCP folder (no .metadata); for safetensors set "
                              f"checkpoint.initial_load_format = 'hf'")
    kind, path = resolve(path, what) if fmt == "auto" else (fmt, path)
    if kind == "hf":
        return load_hf(model, path, what, grow, stage_part=stage_part)
    return load_dcp(model, path, what, stage_part=stage_part, grow=grow)


# ---- full tensors (the converter) --------------------------------------------------------
def read_dcp_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model entries of a DCP folder as full CPU tensors in their saved dtypes (one process)."""
    prefix, saved = dcp_entries(path)
    sd = {k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in saved.items()}
    return _load_saved_names(path, prefix, sd, no_dist=True)


def read_hf_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """(our state dict, ModelArgs from its config.json) of a Hugging Face folder (one process)."""
    try:
        return hf_convert.load_hf_checkpoint(path)
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"'{path}' (hf): " + (str(e.args[0]) if isinstance(e, KeyError) and e.args
                                                    else str(e))) from None


def lora_from_entries(saved: dict[str, tuple], alpha: float) -> Lora | None:
    """The [lora] section of the adapters a checkpoint holds (rank and targets from the
    saved names and shapes, ``alpha`` given); None without adapters."""
    lora_a = {k: v for k, v in saved.items() if k.endswith(".lora_a.weight")}
    if not lora_a:
        return None
    ranks = {v[0] for v in lora_a.values()}
    if len(ranks) != 1:
        raise CheckpointError(f"the checkpoint's LoRA adapters have several ranks {sorted(ranks)}")
    targets = sorted({k.split(".")[-3] for k in lora_a})
    return Lora(enable=True, rank=ranks.pop(), alpha=alpha, target_modules=targets)


# ---- a model for inference (the eval) ----------------------------------------------------
def load_model(cfg: JobConfig, checkpoint: str | Path, vocab_size: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    """(model in eval mode with merged adapters, "<format>:<folder>") from any weights path.

    The shape comes from the weights (model_args.json / config.json), else from ``[model]``
    of ``cfg``. LoRA adapters in a DCP checkpoint are applied (rank and targets read from
    it, alpha from ``cfg.lora``) and merged; a checkpoint holding adapters alone takes its
    base weights from ``cfg.checkpoint.initial_load_path``. One process."""
    kind, path = resolve(checkpoint)
    args = read_model_args(kind, path)
    if args is None:
        args = model_args_from_config(cfg, 0)
    elif kind == "dcp":
        args = replace(args, attn_backend=cfg.model.attn_backend)
    if vocab_size > args.vocab_size:
        raise CheckpointError(f"the tokenizer has {vocab_size} tokens but the checkpoint's vocab_size is "
                              f"{args.vocab_size}; pass the tokenizer the model was trained with")
    model = build_model(args, device="meta")
    saved = {} if kind == "hf" else {k: tuple(v.size) for k, v in dcp_entries(path)[1].items()}
    lora = lora_from_entries(saved, cfg.lora.alpha)
    if lora is not None:
        apply_lora(model, lora)
    model.to_empty(device="cpu")
    model.init_buffers("cpu")  # every weight comes from the checkpoint (checked while loading)
    if kind == "hf":
        load_hf(model, path, "--checkpoint")
    elif all(is_lora_name(k) for k in saved):  # adapters alone: the base comes from the initial load
        base = cfg.checkpoint.initial_load_path
        if not base:
            raise CheckpointError(f"--checkpoint '{path}' holds LoRA adapters only; set "
                                  f"checkpoint.initial_load_path in --config to the base model")
        fmt = "auto" if cfg.checkpoint.initial_load_format == "dcp" else cfg.checkpoint.initial_load_format
        load_weights(model, base, "checkpoint.initial_load_path", fmt)
        load_dcp(model, path, "--checkpoint", may_lack=lambda k: not is_lora_name(k))
    else:
        load_dcp(model, path, "--checkpoint", may_lack=lambda k: False)
    if lora is not None:
        merge_lora(model)
    model = model.to(device=device, dtype=dtype).eval()
    model.init_buffers(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, f"{kind}:{path}"


def check_initial_load(cfg: JobConfig) -> None:
    """checkpoint.initial_load_path exists, and a Hugging Face folder's weight files are whole
    (their headers read, no tensor data): one line naming the file, before any heavy work."""
    path = cfg.checkpoint.initial_load_path
    if not path:
        return
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint.initial_load_path '{path}' does not exist; point it at a DCP folder or "
                              f"a Hugging Face model folder")
    if cfg.checkpoint.initial_load_format == "hf":
        try:
            hf_convert.check_safetensors_headers(path)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint.initial_load_path: {e}") from None
