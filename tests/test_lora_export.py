"""LoRA checkpoints and exports: the merged export (plain Llama names, read by convert_hf and
the eval) gives the adapter model's logits; the adapters-only export and training
checkpoints hold the adapters alone, and a run resumes from such a checkpoint exactly,
its frozen base re-loaded from checkpoint.initial_load_path."""

import json
import shutil
import sys

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from helpers import ROOT, launch, tiny_config
from titan_jepa.checkpoint import CheckpointError, complete_checkpoints, export_model
from titan_jepa.config import Lora, load_config
from titan_jepa.checkpoint.weights import load_dcp, load_model
from titan_jepa.models.lora import apply_lora, is_lora_name
from titan_jepa.models.llama import build_model, model_args_for

sys.path.insert(0, str(ROOT / "tools"))
from convert_hf import load_ours  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
ALL = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
LORA = {"enable": True, "rank": 4, "alpha": 8.0, "target_modules": ALL}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny CPU steps: OpenMP threads only contend
    yield
    torch.set_num_threads(before)


def _model_keys(path):
    md = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return {k[len("model."):] for k in md if k.startswith("model.")}, md


def _plain_model(seed=None):
    model = build_model(model_args_for("debug"), device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=seed if seed is not None else 0)
    return model


def _lora_model(base_path=None, adapters_path=None, seed=0):
    """The adapter model: base weights (seeded init or a DCP folder) + adapters (a DCP folder)."""
    model = build_model(model_args_for("debug"), device="meta")
    apply_lora(model, Lora(**LORA))
    model.to_empty(device="cpu")
    model.init_weights(seed=seed)
    if base_path is not None:
        load_dcp(model, base_path, "base")  # the adapters keep their init
    if adapters_path is not None:
        loaded = load_dcp(model, adapters_path, "adapters", may_lack=lambda k: not is_lora_name(k))
        assert loaded and all(is_lora_name(k) for k in loaded)
    return model


TOKENS = torch.randint(0, 2000, (2, 24), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_merged_and_adapters_only_exports(demo_dir, tmp_path):
    model = _lora_model()
    for n, p in model.named_parameters():
        if n.endswith("lora_b.weight"):
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    want = model(TOKENS).logits
    base_keys = set(_plain_model().state_dict())

    merged = export_model(model, tmp_path / "merged", 1, lora=Lora(**LORA))
    keys, _ = _model_keys(merged)
    assert keys == base_keys  # plain Llama names, no adapters
    plain = _plain_model(seed=1)  # other weights everywhere: all must come from the export
    plain.load_state_dict(load_ours(str(merged)))  # tools/convert_hf.py reads it
    torch.testing.assert_close(plain(TOKENS).logits, want, rtol=1e-5, atol=1e-5)
    # and so does the eval (no [lora] needed)
    cfg = load_config(extra=tiny_config(tmp_path, demo_dir))
    evaluated, _ = load_model(cfg, merged, 2304, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(evaluated(TOKENS).logits, want, rtol=1e-5, atol=1e-5)

    adapters = export_model(model, tmp_path / "adapters", 1,
                            lora=Lora(**LORA, merge_on_export=False, save_adapters_only=True))
    keys, _ = _model_keys(adapters)
    assert keys and all(is_lora_name(k) for k in keys)
    assert keys == {k for k in model.state_dict() if is_lora_name(k)}
    # the eval takes the base from checkpoint.initial_load_path
    base = export_model(_plain_model(), tmp_path / "base", 0)
    cfg = load_config(extra=tiny_config(tmp_path, demo_dir, lora={"alpha": 8.0},
                                        checkpoint={"initial_load_path": str(base)}))
    evaluated, _ = load_model(cfg, adapters, 2304, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(evaluated(TOKENS).logits, want, rtol=1e-5, atol=1e-5)

    both = export_model(model, tmp_path / "both", 1, lora=Lora(**LORA, merge_on_export=False,
                                                                save_adapters_only=False))
    assert _model_keys(both)[0] == set(model.state_dict())


def _train_cfg(run_dir, demo, base, steps=4):
    return tiny_config(run_dir, demo, training={"steps": steps, "local_batch_size": 2},
                       optimizer={"lr": 1e-2}, lora=LORA,
                       checkpoint={"enable": True, "interval": 2, "keep_latest_k": 0,
                                   "initial_load_path": str(base), "model_only_export": True})


def test_adapter_checkpoints_resume_and_merged_export_on_two_ranks(demo_dir, tmp_path):
    # the base model (seed 7) differs from the seeded init of the run (seed 0)
    base = export_model(_plain_model(seed=7), tmp_path / "base", 0)
    run = tmp_path / "run"
    losses = launch(2, _train_cfg(run, demo_dir, base), tmp_path)  # FSDP on 2 ranks
    folder = run / "t" / "checkpoint"
    assert list(complete_checkpoints(folder)) == [2, 4]
    keys, md = _model_keys(folder / "step-4")
    assert keys == {k for k in _lora_model().state_dict() if is_lora_name(k)}  # adapters alone
    assert any(k.startswith("optimizer.") for k in md)
    assert json.loads((folder / "step-4" / "train_state.json").read_text())["model_keys"] == "trainable"

    # the merged export (gathered from both ranks) gives the adapter model's logits
    with torch.no_grad():
        want = _lora_model(base_path=base, adapters_path=folder / "step-4")(TOKENS).logits
        plain = _plain_model(seed=3)
        plain.load_state_dict(load_ours(str(folder / "model-only" / "step-4")))
        torch.testing.assert_close(plain(TOKENS).logits, want, rtol=1e-5, atol=1e-5)

    # resume after step 2 from the adapters-only checkpoint: the base is re-loaded from
    # initial_load_path (without it the seed-0 init would give other losses)
    resumed_run = tmp_path / "resumed"
    shutil.copytree(folder / "step-2", resumed_run / "t" / "checkpoint" / "step-2")
    assert launch(2, _train_cfg(resumed_run, demo_dir, base), tmp_path) == losses[2:]

    # such a checkpoint without its base is one clear error, not a silently wrong model
    no_base = _train_cfg(resumed_run, demo_dir, base)
    no_base["checkpoint"]["initial_load_path"] = ""
    with pytest.raises(CheckpointError, match=r"holds the trainable parameters alone .*initial_load_path"):
        launch(1, no_base, tmp_path)
