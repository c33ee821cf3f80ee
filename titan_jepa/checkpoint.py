"""Checkpoints: periodic saves, auto-resume (also onto another parallel layout), initial
loads (DCP or Hugging Face), model-only export and seed checkpoints.

    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, loaders)
    done = checkpointer.load()        # the step of the checkpoint resumed from, else 0
    for step in range(done + 1, cfg.training.steps + 1):
        ...
        checkpointer.maybe_save(step)  # every checkpoint.interval steps and at the last step
    checkpointer.finish(step)          # waits for async saves, writes the model-only export

    python -m titan_jepa.checkpoint --config X.toml --create-seed-checkpoint

Layout (``<ckpt>`` is ``checkpoint.folder``, relative to the run folder unless absolute):

    <ckpt>/step-<N>/                  a complete checkpoint (only these names are loaded)
        .metadata, __<rank>_0.distcp  DCP: "model.<fqn>" and "optimizer.<...>" entries
        train_state.json              {"step", "lr_scheduler", "num_slots", "world_size", "model_keys", "extra"}
        dataloader/slot_<k>.json      data-loader state of batch slot k: {"dp_rank_<k>": "<json>"}
        rng/rank_<r>.pt               torch CPU (+ CUDA) and python ``random`` states of rank r
    <ckpt>/step-<N>.tmp/              a save in progress, or one that was killed: ignored,
                                      and removed when the next run starts
    <ckpt>/step-0/                    a seed checkpoint: the DCP "model." entries alone
    <ckpt>/model-only/step-<N>/       the final weights alone (checkpoint.model_only_export),
                                      in checkpoint.export_dtype

LoRA (``[lora]`` enabled):
  * ``save_adapters_only`` with a ``checkpoint.initial_load_path`` (the base model): the
    "model." part of training checkpoints holds the trainable parameters alone (the
    adapters, and a trainable STP predictor if any); train_state.json says
    ``"model_keys": "trainable"``. On resume the frozen base is first re-loaded from
    initial_load_path, then the adapters, optimizer and the rest from the checkpoint; keep
    initial_load_path as it was. Without initial_load_path (a base from the seeded init, as
    in tests) checkpoints hold every weight, so they stay self-contained.
  * the model-only export: with ``merge_on_export`` the adapters are folded into the base
    weights (``W + alpha / rank * B @ A``): the export has the plain Llama names, so
    tools/convert_hf.py and the eval read it as any base model. The full state dict is
    gathered to rank 0's CPU memory for this, and rank 0 writes the folder. Otherwise, with
    ``save_adapters_only``, the export holds the lora_a / lora_b weights alone (the eval
    takes the base from checkpoint.initial_load_path); with neither, base and adapters.

A checkpoint without train_state.json (seed, export) is *model-only*: loading it restores the
weights and starts training at step N + 1 with a fresh optimizer, schedule and data.
Model-only and Hugging Face loads may lack LoRA adapter weights (a base model); the adapters
then keep their initialisation. A full checkpoint must match the model exactly.

Atomicity: every rank writes into ``step-<N>.tmp``; DCP's save returns on rank 0 only after
every rank's files are written and ``.metadata`` is written, and then rank 0 renames the
folder to ``step-<N>``. A process killed mid-save leaves the previous checkpoint untouched.
With checkpoint.async_mode the state is copied to CPU memory and written by a background
thread (over its own gloo group); rank 0 renames when the write completes, and the next save
and ``finish`` wait for it. Saving the same step twice in one run is a no-op.

Layout independence: DCP reshards model and optimizer tensors (FSDP2 / TP DTensors or plain
tensors) by their global offsets. Data-loader states are per batch slot (train.py keeps one
loader per slot; the number of slots is global_batch_size / local_batch_size, whatever the
layout), each slot in its own file written by the rank owning it, so any rank can read any
slot. RNG states are per rank; a rank that has no file of its own (more ranks than when
saved) takes rank 0's.

Test hook: with ``TITAN_JEPA_TEST_STALL_SAVE_STEP=N`` rank 0 prints ``stalled in save of
step N`` and sleeps inside the save of step N, after all files are written and before the
rename, so a test can SIGKILL the process mid-save deterministically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from titan_jepa.config import ConfigError, JobConfig, Lora

logger = logging.getLogger("titan_jepa")
# DCP warns on every single-process save/load; that is the intended use here
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

STEP_RE = re.compile(r"^step-(\d+)$")
TMP = ".tmp"
TRAIN_STATE = "train_state.json"
STALL_ENV = "TITAN_JEPA_TEST_STALL_SAVE_STEP"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# optimizer entries keyed by parameter name ("optimizer.param_groups.<fqn>.lr"), not by group
# position: under pipeline parallelism each rank's groups hold other parameters, and DCP
# would keep one rank's copy of a positional entry
OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class CheckpointError(ConfigError):
    """A checkpoint cannot be loaded as asked; the message is one line naming the fix."""


def checkpoint_folder(cfg: JobConfig) -> Path:
    folder = Path(cfg.checkpoint.folder)
    return folder if folder.is_absolute() else cfg.run_folder / folder


def complete_checkpoints(folder: Path) -> dict[int, Path]:
    """{step: path} of the finished checkpoints in ``folder`` (unfinished ones end in .tmp)."""
    found = {}
    if folder.is_dir():
        for p in folder.iterdir():
            m = STEP_RE.match(p.name)
            if m and (p / ".metadata").is_file():
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _rename_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # the same step saved again (a run resumed from an earlier step)
        old = final.with_name(final.name + ".old" + TMP)
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _remove_unfinished(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(TMP) and p.is_dir():
                logger.warning(f"removing the unfinished checkpoint {p} (an interrupted save)")
                shutil.rmtree(p, ignore_errors=True)


def is_adapter(key: str) -> bool:
    """LoRA adapter weights (titan_jepa/lora.py): absent from base-model checkpoints."""
    return ".lora_a." in key or ".lora_b." in key


def _clean_fqn(name: str) -> str:
    # wrappers (activation checkpointing, torch.compile) that state-dict keys do not show
    for w in ("_checkpoint_wrapped_module.", "_orig_mod."):
        name = name.replace(w, "")
    return name


def trainable_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the parameters that require grad."""
    return {_clean_fqn(n) for n, p in model.named_parameters() if p.requires_grad}


def _check_model_matches(path: Path, model_sd: dict, what: str, base_only: bool = False,
                         stage_part: bool = False) -> tuple[str, set]:
    """Compare the checkpoint's model entries with the model; returns their key prefix
    ("model." for ours, "" for model-only DCP folders with top-level keys, as torchtitan's)
    and the model keys the checkpoint holds. ``base_only``: it may lack LoRA adapters.
    ``stage_part``: the model is this rank's pipeline stages (parallelism.pp > 1), so the
    checkpoint's other entries belong to other stages."""
    md = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    prefix = "model." if any(k.startswith("model.") for k in md) else ""
    saved = {k[len(prefix):]: tuple(v.size) for k, v in md.items()
             if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}
    if prefix == "":
        saved = {k: v for k, v in saved.items() if not k.startswith("optimizer.")}
    want = {k: tuple(v.shape) for k, v in model_sd.items()}
    missing = [k for k in want if k not in saved and not (base_only and is_adapter(k))]
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
                              f"use the model.flavor / model.* settings it was saved with")
    return prefix, set(saved) & set(want)


class Checkpointer:
    """Saves and restores everything a run needs to continue bit-identically."""

    def __init__(self, cfg: JobConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, loaders: list, extra: dict | None = None):
        """``extra``: more small objects with state_dict()/load_state_dict() (the same on
        every rank, JSON-able), kept in train_state.json under their names."""
        self.cfg, self.ckpt = cfg, cfg.checkpoint
        self.model, self.optimizer, self.scheduler, self.loaders = model, optimizer, scheduler, loaders
        self.extra = extra or {}
        self.rank, self.world = _rank_world()
        self.folder = checkpoint_folder(cfg)
        self.export_folder = self.folder / "model-only"
        self.num_slots = cfg.training.global_batch_size // cfg.training.local_batch_size
        # [lora] save_adapters_only: checkpoints hold the trainable parameters alone
        self.adapters_only = cfg.lora.enable and cfg.lora.save_adapters_only and bool(self.ckpt.initial_load_path)
        self.trainable = trainable_keys(model)
        # async saves run their collectives in a background thread: they need their own
        # process group (gloo, so that it also works next to NCCL)
        self.pg = dist.new_group(backend="gloo") if self.ckpt.async_mode and self.world > 1 else None
        self._pending = None  # (future, step) of an async save in flight
        self._lock = threading.Lock()
        self._finalized: set[int] = set()
        self._last_saved = -1
        if self.ckpt.load_step != -1 and not self.ckpt.enable:
            raise CheckpointError(f"checkpoint.load_step = {self.ckpt.load_step} needs checkpoint.enable = true")
        if self.ckpt.initial_load_path and not Path(self.ckpt.initial_load_path).exists():
            raise CheckpointError(f"checkpoint.initial_load_path '{self.ckpt.initial_load_path}' does not "
                                  f"exist; point it at a DCP folder or a Hugging Face model folder")

    # ---- loading -----------------------------------------------------------------------
    def load(self) -> int:
        """Resume from the latest (or checkpoint.load_step) checkpoint, else apply
        checkpoint.initial_load_path; returns the step reached (0: start from scratch)."""
        if self.ckpt.enable:
            if self.rank == 0:
                _remove_unfinished(self.folder)
                _remove_unfinished(self.export_folder)
            self._barrier()
            found = complete_checkpoints(self.folder)
            if self.ckpt.load_step != -1:
                if self.ckpt.load_step not in found:
                    raise CheckpointError(
                        f"checkpoint.load_step = {self.ckpt.load_step} does not exist in {self.folder}; "
                        f"available steps: {list(found) or 'none'}")
                return self._load_checkpoint(found[self.ckpt.load_step])
            if found:
                return self._load_checkpoint(found[max(found)])
        self._initial_load()
        return 0

    def _initial_load(self) -> None:
        """checkpoint.initial_load_path, when set (else the weights keep their seeded init)."""
        if self.ckpt.initial_load_path:
            path = Path(self.ckpt.initial_load_path)
            if self.ckpt.initial_load_format == "hf":
                self._load_hf(path)
            else:
                if not (path / ".metadata").is_file():
                    raise CheckpointError(f"checkpoint.initial_load_path '{path}' is not a DCP folder (no "
                                          f".metadata); for safetensors set checkpoint.initial_load_format = 'hf'")
                self._load_model_only(path, "checkpoint.initial_load_path")
            logger.info(f"initial weights loaded from {path} ({self.ckpt.initial_load_format})")

    def _load_checkpoint(self, path: Path) -> int:
        step = int(STEP_RE.match(path.name).group(1))
        if not (path / TRAIN_STATE).is_file():
            self._load_model_only(path, "checkpoint")
            logger.info(f"loaded the model-only checkpoint {path}; training starts at step {step + 1}")
            return step
        train_state = json.loads((path / TRAIN_STATE).read_text())
        trainable_only = train_state.get("model_keys") == "trainable"
        if trainable_only:
            # [lora] save_adapters_only: the frozen base is not in the checkpoint
            if not self.ckpt.initial_load_path:
                raise CheckpointError(f"checkpoint '{path}' holds the trainable parameters alone "
                                      f"(lora.save_adapters_only); set checkpoint.initial_load_path to "
                                      f"the base model the run started from")
            self._initial_load()
        model_sd = self._model_state(trainable_only)
        _check_model_matches(path, model_sd, "checkpoint",  # adapters included, when LoRA is on
                             stage_part=self.cfg.parallelism.pp > 1)
        state = {"model": model_sd,
                 "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=OPTIM_OPTIONS)}
        dcp.load(state, checkpoint_id=str(path), no_dist=self.world == 1)
        set_model_state_dict(self.model, state["model"], options=StateDictOptions(strict=not trainable_only))
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=OPTIM_OPTIONS)
        self.scheduler.load_state_dict(train_state["lr_scheduler"])
        for name, obj in self.extra.items():
            if name in train_state.get("extra", {}):
                obj.load_state_dict(train_state["extra"][name])
        for loader in self.loaders:
            slot_file = path / "dataloader" / f"slot_{loader.rank}.json"
            if not slot_file.is_file():
                raise CheckpointError(
                    f"checkpoint '{path}' has no data-loader state for batch slot {loader.rank}: it was saved "
                    f"with {train_state['num_slots']} slots (global_batch_size / local_batch_size), this run "
                    f"has {self.num_slots}; keep the batch sizes of the saved run")
            try:
                loader.load_state_dict(json.loads(slot_file.read_text()))
            except ValueError as e:
                raise CheckpointError(f"checkpoint '{path}': {e}") from None
        self._load_rng(path)
        logger.info(f"resumed from {path} (saved with world size {train_state['world_size']}); "
                    f"training continues at step {step + 1}")
        return step

    def _load_model_only(self, path: Path, what: str) -> None:
        """Weights alone; LoRA adapters missing from a base-model checkpoint keep their init."""
        model_sd = get_model_state_dict(self.model)
        prefix, present = _check_model_matches(path, model_sd, what, base_only=True,
                                               stage_part=self.cfg.parallelism.pp > 1)
        model_sd = {k: v for k, v in model_sd.items() if k in present}
        if prefix:
            state = {"model": model_sd}
            dcp.load(state, checkpoint_id=str(path), no_dist=self.world == 1)
            model_sd = state["model"]
        else:
            dcp.load(model_sd, checkpoint_id=str(path), no_dist=self.world == 1)
        set_model_state_dict(self.model, model_sd, options=StateDictOptions(strict=False))

    def _load_hf(self, path: Path) -> None:
        from titan_jepa.hf_convert import from_hf_state_dict, load_hf_safetensors

        dtypes = {k: v.dtype for k, v in get_model_state_dict(self.model).items()}
        sd, err = {}, None
        if self.rank == 0:  # rank 0 reads the files; set_model_state_dict broadcasts and shards
            try:
                sd = from_hf_state_dict(load_hf_safetensors(path), self.model.args)
                sd = {k: v.to(dtypes[k]) if k in dtypes else v for k, v in sd.items()}
            except (OSError, KeyError, ValueError) as e:
                err = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if self.world > 1:
            box = [err]
            dist.broadcast_object_list(box, src=0)
            err = box[0]
        if err is not None:
            raise CheckpointError(f"checkpoint.initial_load_path '{path}' (hf): {err}")
        # strict=False: LoRA adapters are not in a HF base model (from_hf_state_dict has
        # checked that every base weight is there)
        set_model_state_dict(self.model, sd, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=self.world > 1, strict=False))

    def _load_rng(self, path: Path) -> None:
        f = path / "rng" / f"rank_{self.rank}.pt"
        if not f.is_file():
            f = path / "rng" / "rank_0.pt"
        rng = torch.load(f, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        random.setstate(rng["python"])

    def _model_state(self, trainable_only: bool) -> dict:
        sd = get_model_state_dict(self.model)
        return {k: v for k, v in sd.items() if k in self.trainable} if trainable_only else sd

    # ---- saving ------------------------------------------------------------------------
    def maybe_save(self, step: int) -> None:
        """Save at every checkpoint.interval steps and at the last step (when enabled)."""
        if self.ckpt.enable and (step % self.ckpt.interval == 0 or step == self.cfg.training.steps):
            self.save(step)

    def save(self, step: int) -> None:
        if step == self._last_saved:  # already saved (e.g. an interval and a milestone save)
            return
        self._last_saved = step
        self.wait()  # at most one save in flight
        tmp = self.folder / f"step-{step}{TMP}"
        tmp.mkdir(parents=True, exist_ok=True)
        self._write_side_files(tmp, step)
        state = {"model": self._model_state(self.adapters_only),
                 "optimizer": get_optimizer_state_dict(self.model, self.optimizer, options=OPTIM_OPTIONS)}
        writer = dcp.FileSystemWriter(str(tmp))
        if self.ckpt.async_mode:
            # the state is copied to CPU memory before this returns; the files are written
            # in a background thread while training goes on
            future = dcp.async_save(state, storage_writer=writer, process_group=self.pg,
                                    no_dist=self.world == 1)
            self._pending = (future, step)
            if self.rank == 0:
                future.add_done_callback(lambda f: f.exception() is None and self._finalize(step))
        else:
            dcp.save(state, storage_writer=writer, no_dist=self.world == 1)
            if self.rank == 0:
                self._finalize(step)

    def _write_side_files(self, tmp: Path, step: int) -> None:
        if self.rank == 0:
            train_state = {"step": step, "lr_scheduler": self.scheduler.state_dict(),
                           "num_slots": self.num_slots, "world_size": self.world,
                           "model_keys": "trainable" if self.adapters_only else "all",
                           "extra": {name: obj.state_dict() for name, obj in self.extra.items()}}
            _write(tmp / TRAIN_STATE, json.dumps(train_state).encode())
        for loader in self.loaders:
            _write(tmp / "dataloader" / f"slot_{loader.rank}.json", json.dumps(loader.state_dict()).encode())
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
        buf = io.BytesIO()
        torch.save(rng, buf)
        _write(tmp / "rng" / f"rank_{self.rank}.pt", buf.getvalue())

    def _finalize(self, step: int) -> None:
        """Rank 0, once every rank's files are written: make step-N visible, prune old ones."""
        with self._lock:
            if step in self._finalized:
                return
            if os.environ.get(STALL_ENV) == str(step):
                print(f"stalled in save of step {step}", flush=True)
                time.sleep(3600)
            _rename_into_place(self.folder / f"step-{step}{TMP}", self.folder / f"step-{step}")
            self._finalized.add(step)
            logger.info(f"checkpoint saved: {self.folder / f'step-{step}'}")
            k = self.ckpt.keep_latest_k
            if k > 0:
                for old in list(complete_checkpoints(self.folder).values())[:-k]:
                    shutil.rmtree(old, ignore_errors=True)

    def wait(self) -> None:
        """Block until an async save in flight is written and visible."""
        if self._pending is None:
            return
        future, step = self._pending
        self._pending = None
        future.result()
        if self.rank == 0:
            self._finalize(step)

    def finish(self, step: int) -> None:
        """After the loop: wait for async saves; write the model-only export if asked."""
        self.wait()
        if self.ckpt.model_only_export:
            path = export_model(self.model, self.export_folder, step, DTYPES[self.ckpt.export_dtype],
                                lora=self.cfg.lora if self.cfg.lora.enable else None)
            logger.info(f"model-only export written: {path}")
        self._barrier()

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def export_model(model: torch.nn.Module, folder: Path, step: int,
                 dtype: torch.dtype = torch.float32, lora: Lora | None = None) -> Path:
    """Save the weights alone (DCP "model." entries, in ``dtype``) to ``folder/step-<step>``;
    every rank calls it. Usable as checkpoint.initial_load_path or as a seed checkpoint.
    ``lora`` (the enabled [lora] section) of a model with adapters: ``merge_on_export`` writes
    the merged base weights (gathered on rank 0), else ``save_adapters_only`` the adapters alone.
    Modules an objective attached to the model (the STP predictor) are not exported."""
    from titan_jepa.lora import is_lora_name, lora_modules, merge_lora_state_dict
    from titan_jepa.models.llama import is_llama_key

    rank, world = _rank_world()
    tmp, final = folder / f"step-{step}{TMP}", folder / f"step-{step}"
    if lora is not None and lora_modules(model) and lora.merge_on_export:
        # full tensors on rank 0's CPU (the other ranks get nothing), merged there
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            sd = {k: v.to(dtype) for k, v in merge_lora_state_dict(full, lora.alpha).items() if is_llama_key(k)}
            del full
            dcp.save({"model": sd}, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=True)
            _rename_into_place(tmp, final)
        return final
    sd = {k: v.detach().to(dtype) for k, v in get_model_state_dict(model).items() if is_llama_key(k)}
    if lora is not None and lora_modules(model) and lora.save_adapters_only:
        sd = {k: v for k, v in sd.items() if is_lora_name(k)}
    dcp.save({"model": sd}, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=world == 1)
    if rank == 0:
        _rename_into_place(tmp, final)
    return final


def create_seed_checkpoint(cfg: JobConfig) -> Path:
    """Single process: the model initialised by init_weights on CPU, saved as a model-only
    step-0 checkpoint in the checkpoint folder (a run with checkpoint.enable starts from it)."""
    from titan_jepa.data.tokenizer import build_tokenizer
    from titan_jepa.models.llama import build_model
    from titan_jepa.train import model_args_from_config

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise CheckpointError("--create-seed-checkpoint runs in one process; launch it with python, not torchrun")
    folder = checkpoint_folder(cfg)
    existing = complete_checkpoints(folder)
    if existing:
        raise CheckpointError(f"{folder} already holds checkpoint steps {list(existing)}; "
                              f"a seed checkpoint goes into an empty checkpoint.folder")
    args = model_args_from_config(cfg, build_tokenizer(cfg.tokenizer).vocab_size)
    model = build_model(args, device="cpu")
    model.init_weights(seed=cfg.job.seed)
    return export_model(model, folder, 0, torch.float32)


def main(argv: list[str] | None = None) -> None:
    from titan_jepa.config import config_from_argv

    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[titan_jepa %(asctime)s] %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    try:
        if "--create-seed-checkpoint" not in argv:
            raise ConfigError("usage: python -m titan_jepa.checkpoint --config X.toml --create-seed-checkpoint")
        argv.remove("--create-seed-checkpoint")
        path = create_seed_checkpoint(config_from_argv(argv))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"seed checkpoint written: {path}")


if __name__ == "__main__":
    main()
