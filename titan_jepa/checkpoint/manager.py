"""Saving and resuming a run: ``Checkpointer`` (periodic saves, auto-resume onto any
parallel layout, the initial load, keep-best, async saves, the model-only export at the end).

    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, loaders)
    done = checkpointer.load()        # the step of the checkpoint resumed from, else 0
    checkpointer.maybe_save(step)     # every checkpoint.interval steps and at the last step
    checkpointer.finish(step)         # waits for async saves, writes the model-only export

The folder layout, atomicity, LoRA checkpoints and layout independence are described in
docs/checkpoints.md; the files and their manifest are checkpoint/files.py, reading weights
checkpoint/weights.py, the model-only export and seed checkpoints checkpoint/export.py.
"""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import threading
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from titan_jepa.checkpoint.files import (
    TMP,
    TRAIN_STATE,
    quiet_dcp,
    remove_checkpoint,
    checkpoint_folder,
    move_aside,
    remove_unfinished,
    rename_into_place,
    save_failure,
    verify_checkpoint,
    write_file,
    write_manifest,
)
from titan_jepa.checkpoint.contract import changes, check_contract
from titan_jepa.config import JobConfig
from titan_jepa.config.load import toml_text
from titan_jepa.errors import CheckpointError
from titan_jepa.parallel.collectives import rank_world
from titan_jepa.models.llama import clean_name
from titan_jepa.checkpoint.weights import (
    STEP_RE,
    check_dcp,
    check_initial_load,
    complete_checkpoints,
    load_dcp,
    load_weights,
    write_model_args,
)

logger = logging.getLogger("titan_jepa")

from titan_jepa.config.dtypes import DTYPES  # noqa: E402
# optimizer entries keyed by parameter name ("optimizer.param_groups.<fqn>.lr"), not by group
# position: under pipeline parallelism each rank's groups hold other parameters, and DCP
# would keep one rank's copy of a positional entry
OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


def _optim_options(path: Path) -> StateDictOptions:
    """How the checkpoint at ``path`` stored its optimizer state: keyed by parameter name
    (``optimizer.param_groups.<fqn>.lr``: this version) or by group position
    (``optimizer.param_groups.<i>.lr``: checkpoints written before pipeline parallelism),
    so older checkpoints still resume."""
    keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    groups = [k[len("optimizer.param_groups."):-len(".lr")] for k in keys
              if k.startswith("optimizer.param_groups.") and k.endswith(".lr")]
    positional = bool(groups) and all(g.isdigit() for g in groups)
    return StateDictOptions() if positional else OPTIM_OPTIONS


def trainable_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the parameters that require grad."""
    return {clean_name(n) for n, p in model.named_parameters() if p.requires_grad}


class _WithHeads(torch.nn.Module):
    """The model's and the heads' children side by side: the optimizer's parameter names
    (its DCP state) are the model's own and the heads' own (``stp_predictor.weight``)."""

    def __init__(self, model: torch.nn.Module, heads: torch.nn.Module):
        super().__init__()
        for name, child in [*model.named_children(), *heads.named_children()]:
            self.add_module(name, child)


class Checkpointer:
    """Saves and restores everything a run needs to continue bit-identically."""

    def __init__(self, cfg: JobConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, loaders: list, extra: dict | None = None, heads: torch.nn.Module | None = None,
                 before_rename: Callable[[int], None] | None = None, tokens: dict | None = None,
                 contract: dict | None = None):
        """``extra``: more small objects with state_dict()/load_state_dict() (the same on
        every rank, JSON-able), kept in train_state.json under their names. ``heads``: the
        objectives' trainable modules (objectives/heads.py), saved under "heads".
        ``before_rename``: a test hook (see the module docstring). ``tokens``: the tokenizer's
        ``tokens_record`` (tokens.json beside every checkpoint and export). ``contract``: what a
        resume must match (checkpoint/contract.py ``make_contract``), saved in train_state.json."""
        self.before_rename, self.tokens, self.contract = before_rename, tokens, contract
        # the tokenizer added tokens: base weights with fewer vocabulary rows grow (weights.py)
        self._grown = bool(tokens and tokens.get("added"))
        self.cfg, self.ckpt = cfg, cfg.checkpoint
        self.model, self.optimizer, self.scheduler, self.loaders = model, optimizer, scheduler, loaders
        self.heads = heads
        self._optim_owner = model if heads is None else _WithHeads(model, heads)
        self.extra = extra or {}
        self.rank, self.world = rank_world()
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
        self.best: dict | None = None  # checkpoint.keep_best: {"metric", "mode", "value", "step"}
        if self.ckpt.load_step != -1 and not self.ckpt.enable:
            raise CheckpointError(f"checkpoint.load_step = {self.ckpt.load_step} needs checkpoint.enable = true")
        check_initial_load(cfg)

    # ---- loading -----------------------------------------------------------------------
    def load(self) -> int:
        """Resume from the latest (or checkpoint.load_step) checkpoint, else apply
        checkpoint.initial_load_path; returns the step reached (0: start from scratch)."""
        if self.ckpt.enable:
            if self.rank == 0:
                remove_unfinished(self.folder)
                remove_unfinished(self.export_folder)
            self._barrier()
            found = complete_checkpoints(self.folder)
            if self.ckpt.load_step != -1:
                if self.ckpt.load_step not in found:
                    raise CheckpointError(
                        f"checkpoint.load_step = {self.ckpt.load_step} does not exist in {self.folder}; "
                        f"available steps: {list(found) or 'none'}")
                path = found[self.ckpt.load_step]
                reason = self._agree(verify_checkpoint(path) if self.rank == 0 else None)
                if reason:
                    raise CheckpointError(f"checkpoint.load_step = {self.ckpt.load_step}: '{path}' is corrupt "
                                          f"({reason}); choose another --checkpoint.load_step")
                return self._load_checkpoint(path)
            path = self._newest_intact(found)
            if path is not None:
                return self._load_checkpoint(path)
        self._initial_load()
        return 0

    def _agree(self, value):
        """Rank 0's value on every rank."""
        if self.world > 1:
            box = [value]
            dist.broadcast_object_list(box, src=0)
            value = box[0]
        return value

    def _newest_intact(self, found: dict[int, Path]) -> Path | None:
        """The newest checkpoint that verifies; corrupt newer ones are moved aside (rank 0)."""
        moved = []
        for step in sorted(found, reverse=True):
            reason = None
            if self.rank == 0:
                reason = verify_checkpoint(found[step])
                if reason:
                    aside = move_aside(found[step])
                    moved.append(aside.name)
                    older = [s for s in found if s < step]
                    logger.warning(f"checkpoint step {step} is corrupt ({reason}); moved it aside to {aside} "
                                   f"and {f'trying step {max(older)}' if older else 'no older checkpoint is left'}")
            if not self._agree(reason):
                return found[step]
        if found:
            raise CheckpointError(f"no intact checkpoint left in {self.folder} (moved aside: "
                                  f"{', '.join(moved)}); repair one, or start elsewhere with "
                                  f"--checkpoint.folder, or pick a step with --checkpoint.load_step")
        return None

    def _initial_load(self) -> None:
        """checkpoint.initial_load_path, when set (else the weights keep their seeded init)."""
        if self.ckpt.initial_load_path:
            path = Path(self.ckpt.initial_load_path)
            load_weights(self.model, path, "checkpoint.initial_load_path", self.ckpt.initial_load_format,
                         stage_part=self.cfg.parallelism.pp > 1, grow=self._grown)
            logger.info(f"initial weights loaded from {path} ({self.ckpt.initial_load_format})")

    def _load_checkpoint(self, path: Path) -> int:
        step = int(STEP_RE.match(path.name).group(1))
        if not (path / TRAIN_STATE).is_file():
            # LoRA adapters it lacks keep their init
            load_dcp(self.model, path, "checkpoint", stage_part=self.cfg.parallelism.pp > 1, grow=self._grown)
            logger.info(f"loaded the model-only checkpoint {path}; training starts at step {step + 1}")
            return step
        train_state = json.loads((path / TRAIN_STATE).read_text())
        self._check_resume(path, step, train_state)  # before anything is loaded
        trainable_only = train_state.get("model_keys") == "trainable"
        if trainable_only:
            # [lora] save_adapters_only: the frozen base is not in the checkpoint
            if not self.ckpt.initial_load_path:
                raise CheckpointError(f"checkpoint '{path}' holds the trainable parameters alone "
                                      f"(lora.save_adapters_only); set checkpoint.initial_load_path to "
                                      f"the base model the run started from")
            self._initial_load()
        model_sd = self._model_state(trainable_only)
        heads_sd, legacy = self._heads_to_load(path)
        # adapters included, when LoRA is on; an old checkpoint's predictor among the model's
        want = {**model_sd, **heads_sd} if legacy else model_sd
        check_dcp(path, want, "checkpoint", stage_part=self.cfg.parallelism.pp > 1)
        optim_options = _optim_options(path)
        state = {"model": want, "optimizer": get_optimizer_state_dict(self._optim_owner, self.optimizer,
                                                                      options=optim_options)}
        if heads_sd and not legacy:
            state["heads"] = heads_sd
        with quiet_dcp():
            dcp.load(state, checkpoint_id=str(path), no_dist=self.world == 1)
        if legacy:
            state["heads"] = {k: state["model"].pop(k) for k in heads_sd}
        set_model_state_dict(self.model, state["model"], options=StateDictOptions(strict=not trainable_only))
        if self.heads is not None:
            set_model_state_dict(self.heads, state["heads"], options=StateDictOptions(strict=True))
        set_optimizer_state_dict(self._optim_owner, self.optimizer, state["optimizer"], options=optim_options)
        self.scheduler.load_state_dict(train_state["lr_scheduler"])
        self._apply_optimizer_settings()  # this run's lr, schedule and AdamW settings, at the resumed step
        for name, obj in self.extra.items():
            if name in train_state.get("extra", {}):
                obj.load_state_dict(train_state["extra"][name])
        best = train_state.get("best")
        if self.ckpt.keep_best and best and best["metric"] == self.ckpt.keep_best:
            self.best = best
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

    def _check_resume(self, path: Path, step: int, train_state: dict) -> None:
        """The resume contract (checkpoint/contract.py): stop with one line when a setting the
        checkpoint depends on changed; log the settings that changed and may; keep the saved
        run's config beside the new one (config.until-step-N.toml)."""
        if self.contract is None:
            return
        if "contract" not in train_state:
            logger.warning(f"checkpoint {path} was saved before resume contracts: the model, tokenizer, data "
                           f"and objectives it was trained with are not checked")
            return
        check_contract(train_state["contract"], self.contract, path)
        changed = changes(train_state.get("config", {}), self.cfg)
        if changed:
            logger.info(f"resuming after step {step} with changed settings: " + ", ".join(
                f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
            if self.rank == 0 and train_state.get("config"):
                saved = self.cfg.run_folder / f"config.until-step-{step}.toml"
                write_file(saved, toml_text(train_state["config"]).encode())

    def _apply_optimizer_settings(self) -> None:
        """The optimizer's settings and the schedule of this run's config, at the resumed
        step (the saved state holds the old ones): lr = this config's lr x its schedule's
        factor at the step; betas, eps and the decaying groups' weight decay from the config."""
        o = self.cfg.optimizer
        sched = self.scheduler
        sched.base_lrs = [o.lr for _ in self.optimizer.param_groups]
        for g, fn in zip(self.optimizer.param_groups, sched.lr_lambdas):
            g["initial_lr"] = o.lr
            g["lr"] = o.lr * fn(sched.last_epoch)
            g["betas"], g["eps"] = (o.beta1, o.beta2), o.eps
            if g["params"] and g["params"][0].ndim >= 2:  # the decaying group (optim.py)
                g["weight_decay"] = o.weight_decay
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _heads_to_load(self, path: Path) -> tuple[dict, bool]:
        """(the heads' state dict to fill, whether the checkpoint keeps it in "model."): the
        objectives' heads were kept among the model's entries before they had their own."""
        keys = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        saved = sorted({k.split(".")[1] for k in keys if k.startswith("heads.")})
        heads_sd = get_model_state_dict(self.heads) if self.heads is not None else {}
        legacy = bool(heads_sd) and not saved and all(f"model.{k}" in keys for k in heads_sd)
        mine = sorted({k.split(".")[0] for k in heads_sd})
        if heads_sd and not saved and not legacy:
            raise CheckpointError(f"checkpoint '{path}' has no {', '.join(mine)} (the objectives' heads); "
                                  f"resume it with the objectives it was saved with")
        # under pp only the last stage's ranks hold the heads
        if not heads_sd and saved and self.cfg.parallelism.pp == 1:
            raise CheckpointError(f"checkpoint '{path}' holds the heads {', '.join(saved)} of objectives this "
                                  f"run does not train; resume it with the objectives it was saved with")
        return heads_sd, legacy

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
    def due(self, step: int) -> bool:
        """Whether ``maybe_save(step)`` saves."""
        return self.ckpt.enable and (step % self.ckpt.interval == 0 or step == self.cfg.training.steps)

    def note_validation(self, step: int, values: dict[str, float]) -> None:
        """checkpoint.keep_best: a new best value of the metric saves this step's checkpoint
        (call it before maybe_save; every rank calls it with the same, all-reduced values)."""
        name = self.ckpt.keep_best
        if not (self.ckpt.enable and name):
            return
        if name not in values:
            raise CheckpointError(f"checkpoint.keep_best = '{name}' is not a validation metric of this run "
                                  f"(it logs {', '.join(sorted(values))})")
        from titan_jepa.config import keep_best_mode

        mode, value = keep_best_mode(self.ckpt), float(values[name])
        if self.best is not None:
            old = self.best["value"]
            if not (value > old if mode == "max" else value < old):
                return
        self.best = {"metric": name, "mode": mode, "value": value, "step": step}
        logger.info(f"step {step}: best {name} so far ({value:.4f}); keeping its checkpoint")
        if self._last_saved == step:  # saved already (e.g. resumed at this step): only record it
            self.wait()
            if self.rank == 0:
                write_file(self.folder / "best.json", json.dumps(self.best).encode())
            return
        self.save(step)

    def maybe_save(self, step: int) -> None:
        """Save at every checkpoint.interval steps and at the last step (when enabled)."""
        if self.due(step):
            self.save(step)

    def save(self, step: int) -> None:
        if step == self._last_saved:  # already saved (e.g. an interval and a milestone save)
            return
        self._last_saved = step
        self.wait()  # at most one save in flight
        tmp = self.folder / f"step-{step}{TMP}"
        state = {"model": self._model_state(self.adapters_only),
                 "optimizer": get_optimizer_state_dict(self._optim_owner, self.optimizer, options=OPTIM_OPTIONS)}
        if self.heads is not None:
            state["heads"] = get_model_state_dict(self.heads)
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            self._write_side_files(tmp, step)
            writer = dcp.FileSystemWriter(str(tmp))
            if self.ckpt.async_mode:
                # the state is copied to CPU memory before this returns; the files are written
                # in a background thread while training goes on
                with quiet_dcp():
                    future = dcp.async_save(state, storage_writer=writer, process_group=self.pg,
                                            no_dist=self.world == 1)
                self._pending = (future, step)
                if self.rank == 0:
                    future.add_done_callback(lambda f: f.exception() is None and self._finalize(step))
            else:
                with quiet_dcp():
                    dcp.save(state, storage_writer=writer, no_dist=self.world == 1)
                if self.rank == 0:
                    self._finalize(step)
        except (Exception, CheckpointException) as e:  # noqa: BLE001 -- a full disk, a lost mount, ...
            self._save_failed(step, e)

    def _save_failed(self, step: int, error: BaseException) -> None:
        """Remove the unfinished folder and stop with one line (the previous checkpoint stays)."""
        if self.rank == 0:
            shutil.rmtree(self.folder / f"step-{step}{TMP}", ignore_errors=True)
        while isinstance(error, BaseException) and not isinstance(error, OSError) and error.__cause__:
            error = error.__cause__
        cause = getattr(error, "failures", None)  # DCP's CheckpointException: {rank: exception}
        if cause:
            error = next(iter(cause.values()))
            error = error[0] if isinstance(error, tuple) else error
        last = [s for s in complete_checkpoints(self.folder) if s < step]
        kept = f"the checkpoint of step {max(last)} is intact" if last else "no earlier checkpoint exists"
        what, fix = save_failure(error, self.folder)
        raise CheckpointError(f"saving the checkpoint of step {step} in {self.folder} failed: {what}; {kept}; "
                              f"{fix}") from None

    def _write_side_files(self, tmp: Path, step: int) -> None:
        if self.rank == 0:
            train_state = {"step": step, "lr_scheduler": self.scheduler.state_dict(),
                           "contract": self.contract, "config": self.cfg.to_dict(),
                           "num_slots": self.num_slots, "world_size": self.world,
                           "model_keys": "trainable" if self.adapters_only else "all",
                           "extra": {name: obj.state_dict() for name, obj in self.extra.items()},
                           "best": self.best}
            write_file(tmp / TRAIN_STATE, json.dumps(train_state).encode())
            if hasattr(self.model, "args"):  # a Transformer (tests drive bare modules too)
                write_model_args(tmp, self.model.args, self.tokens)
        for loader in self.loaders:
            write_file(tmp / "dataloader" / f"slot_{loader.rank}.json", json.dumps(loader.state_dict()).encode())
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
        buf = io.BytesIO()
        torch.save(rng, buf)
        write_file(tmp / "rng" / f"rank_{self.rank}.pt", buf.getvalue())

    def _finalize(self, step: int) -> None:
        """Rank 0, once every rank's files are written: make step-N visible, prune old ones."""
        with self._lock:
            if step in self._finalized:
                return
            if self.before_rename is not None:
                self.before_rename(step)
            write_manifest(self.folder / f"step-{step}{TMP}", self.ckpt.checksums)
            rename_into_place(self.folder / f"step-{step}{TMP}", self.folder / f"step-{step}")
            self._finalized.add(step)
            logger.info(f"checkpoint saved: {self.folder / f'step-{step}'}")
            best = self.best["step"] if self.best is not None else None
            if best == step:
                write_file(self.folder / "best.json", json.dumps(self.best).encode())
            k = self.ckpt.keep_latest_k
            if k > 0:
                for old_step, old in list(complete_checkpoints(self.folder).items())[:-k]:
                    if old_step != best:  # checkpoint.keep_best's step stays beside the latest
                        remove_checkpoint(old)

    def wait(self) -> None:
        """Block until an async save in flight is written and visible."""
        if self._pending is None:
            return
        future, step = self._pending
        self._pending = None
        try:
            future.result()
            if self.rank == 0:
                self._finalize(step)
        except (Exception, CheckpointException) as e:  # noqa: BLE001
            self._save_failed(step, e)

    def finish(self, step: int) -> None:
        """After the loop: wait for async saves; write the model-only export if asked."""
        self.wait()
        if self.ckpt.model_only_export:
            from titan_jepa.checkpoint.export import export_model

            path = export_model(self.model, self.export_folder, step, DTYPES[self.ckpt.export_dtype],
                                lora=self.cfg.lora if self.cfg.lora.enable else None, tokens=self.tokens)
            logger.info(f"model-only export written: {path}")
        self._barrier()

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
