"""The model-only export (the weights alone, for the eval, convert_hf and initial loads) and
seed checkpoints.

    python -m titan_jepa.checkpoint --config X.toml --create-seed-checkpoint
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from titan_jepa.checkpoint.files import TMP, checkpoint_folder, quiet_dcp, rename_into_place, write_manifest
from titan_jepa.checkpoint.weights import complete_checkpoints, write_model_args
from titan_jepa.config import ConfigError, JobConfig, Lora
from titan_jepa.errors import CheckpointError
from titan_jepa.parallel.collectives import rank_world


def export_model(model: torch.nn.Module, folder: Path, step: int,
                 dtype: torch.dtype = torch.float32, lora: Lora | None = None, tokens: dict | None = None) -> Path:
    """Save the weights alone (DCP "model." entries, in ``dtype``) to ``folder/step-<step>``;
    every rank calls it. Usable as checkpoint.initial_load_path or as a seed checkpoint.
    ``lora`` (the enabled [lora] section) of a model with adapters: ``merge_on_export`` writes
    the merged base weights (gathered on rank 0), else ``save_adapters_only`` the adapters alone.
    The objectives' heads (the STP predictor) are not part of the model, so never exported."""
    from titan_jepa.models.lora import is_lora_name, lora_modules, merge_lora_state_dict

    rank, world = rank_world()
    tmp, final = folder / f"step-{step}{TMP}", folder / f"step-{step}"
    if lora is not None and lora_modules(model) and lora.merge_on_export:
        # full tensors on rank 0's CPU (the other ranks get nothing), merged there
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            sd = {k: v.to(dtype) for k, v in merge_lora_state_dict(full, lora.alpha).items()}
            del full
            with quiet_dcp():
                dcp.save({"model": sd}, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=True)
            write_model_args(tmp, model.args, tokens)
            write_manifest(tmp)
            rename_into_place(tmp, final)
        return final
    sd = {k: v.detach().to(dtype) for k, v in get_model_state_dict(model).items()}
    if lora is not None and lora_modules(model) and lora.save_adapters_only:
        sd = {k: v for k, v in sd.items() if is_lora_name(k)}
    with quiet_dcp():
        dcp.save({"model": sd}, storage_writer=dcp.FileSystemWriter(str(tmp)), no_dist=world == 1)
    if rank == 0:
        write_model_args(tmp, model.args, tokens)
        write_manifest(tmp)
        rename_into_place(tmp, final)
    return final


def create_seed_checkpoint(cfg: JobConfig) -> Path:
    """Single process: the model initialised by init_weights on CPU, saved as a model-only
    step-0 checkpoint in the checkpoint folder (a run with checkpoint.enable starts from it)."""
    from titan_jepa.data.tokenizer import build_tokenizer
    from titan_jepa.models.llama import build_model
    from titan_jepa.config.model import model_args_from_config

    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise CheckpointError("--create-seed-checkpoint runs in one process; launch it with python, not torchrun")
    folder = checkpoint_folder(cfg)
    existing = complete_checkpoints(folder)
    if existing:
        raise CheckpointError(f"{folder} already holds checkpoint steps {list(existing)}; "
                              f"a seed checkpoint goes into an empty checkpoint.folder")
    tok = build_tokenizer(cfg)
    args = model_args_from_config(cfg, tok.vocab_size, len(tok.added_tokens))
    model = build_model(args, device="cpu")
    model.init_weights(seed=cfg.job.seed)
    return export_model(model, folder, 0, torch.float32, tokens=tok.tokens_record())


def main(argv: list[str] | None = None) -> None:
    from titan_jepa.config import config_from_argv
    from titan_jepa.errors import run_main
    from titan_jepa.logs import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()

    def seed() -> Path:
        if "--create-seed-checkpoint" not in argv:
            raise ConfigError("usage: python -m titan_jepa.checkpoint --config X.toml --create-seed-checkpoint")
        argv.remove("--create-seed-checkpoint")
        return create_seed_checkpoint(config_from_argv(argv))

    print(f"seed checkpoint written: {run_main(seed)}")


if __name__ == "__main__":
    main()
