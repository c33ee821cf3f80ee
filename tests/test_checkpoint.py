"""Checkpoints: a resumed run equals the uninterrupted one (one process, FSDP, and resharded
onto other layouts); a save killed midway leaves the last good checkpoint; keep_latest_k,
async saves, seed / DCP / Hugging Face initial loads; one-line errors; manifests: a corrupt
newest checkpoint (of 2 FSDP ranks) falls back to the previous one, a failing save (ENOSPC)
leaves the previous checkpoint loadable."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from torch.distributed.checkpoint import FileSystemWriter

from helpers import ROOT, TP_DRIFTS, launch, tiny_config
from titan_jepa.checkpoint import CheckpointError, complete_checkpoints
from titan_jepa.checkpoint.files import MANIFEST, verify_checkpoint
from titan_jepa.config import load_config, write_config

STEPS = 10
# DCP warns on every single-process save and load
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def config(tmp, demo, **sections):
    training = {"steps": STEPS, **sections.pop("training", {})}
    return tiny_config(tmp, demo, training=training, **sections)


def toml_for(cfg_dict, folder):
    """A TOML file of the config, for command-line entry points."""
    return str(write_config(load_config(extra=cfg_dict), folder))


def copy_step(src_run, dst_run, step):
    shutil.copytree(src_run / "t" / "checkpoint" / f"step-{step}", dst_run / "t" / "checkpoint" / f"step-{step}")


@pytest.fixture(scope="module")
def baseline(demo_dir, tmp_path_factory):
    """10 steps on one process, no checkpointing."""
    tmp = tmp_path_factory.mktemp("baseline")
    return launch(1, config(tmp, demo_dir), tmp)


def test_single_process_async_resume_keep_latest_and_export(baseline, demo_dir, tmp_path):
    ckpt = {"enable": True, "interval": 2, "keep_latest_k": 3, "async_mode": True,
            "model_only_export": True, "export_dtype": "bfloat16"}
    cfg = config(tmp_path, demo_dir, checkpoint=ckpt)
    assert launch(1, cfg, tmp_path) == baseline  # saving does not disturb training
    folder = tmp_path / "t" / "checkpoint"
    assert list(complete_checkpoints(folder)) == [6, 8, 10]  # keep_latest_k = 3
    assert sorted(os.listdir(folder)) == ["model-only", "step-10", "step-6", "step-8"]
    md = FileSystemReader(str(folder / "model-only" / "step-10")).read_metadata().state_dict_metadata
    assert all(k.startswith("model.") for k in md)
    assert md["model.output.weight"].properties.dtype == torch.bfloat16

    cfg["checkpoint"]["load_step"] = 6  # resume after step 6: steps 7..10 are bit-identical
    assert launch(1, cfg, tmp_path) == baseline[6:]

    cfg["checkpoint"]["load_step"] = 5
    with pytest.raises(CheckpointError, match=r"load_step = 5 does not exist .*available steps: \[6, 8, 10\]"):
        launch(1, cfg, tmp_path)


@pytest.fixture(scope="module")
def fsdp_run(baseline, demo_dir, tmp_path_factory):
    """10 steps on 2 FSDP ranks with async checkpoints every 5 steps."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cfg = config(tmp, demo_dir, checkpoint={"enable": True, "interval": 5, "keep_latest_k": 0,
                                            "async_mode": True})
    losses = launch(2, cfg, tmp)
    assert losses == pytest.approx(baseline, rel=1e-4)
    assert list(complete_checkpoints(tmp / "t" / "checkpoint")) == [5, 10]
    return tmp, losses


def test_fsdp_resume_is_exact(fsdp_run, demo_dir, tmp_path):
    """Also the 2-rank fallback: step 10's rank-1 shard is truncated, so both ranks agree to
    move it aside and resume from step 5."""
    run, losses = fsdp_run
    ckpt = copy_run(run, tmp_path)
    _truncate(ckpt / "step-10")
    cfg = config(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 5})
    assert launch(2, cfg, tmp_path) == losses[5:]
    assert (ckpt / "step-10.corrupt").is_dir()
    # the resumed run's (synchronous, 2-rank) save of the last step is complete
    assert list(complete_checkpoints(tmp_path / "t" / "checkpoint")) == [5, 10]


@pytest.mark.parametrize("world,parallelism", [(1, {}), (2, {"tp": 2}), (4, {"dp_shard": 2, "tp": 2})],
                         ids=["one-rank", "tp2", "fsdp2xtp2"])
def test_resume_on_another_layout(fsdp_run, demo_dir, tmp_path, world, parallelism):
    run, losses = fsdp_run
    copy_step(run, tmp_path, 5)
    cfg = config(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 5}, parallelism=parallelism)
    rel = 5e-4 if parallelism.get("tp", 1) > 1 and TP_DRIFTS else 1e-4  # helpers.TP_DRIFTS
    assert launch(world, cfg, tmp_path) == pytest.approx(losses[5:], rel=rel)


def test_killed_save_leaves_last_checkpoint(baseline, demo_dir, tmp_path):
    cfg = config(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 2, "keep_latest_k": 1})
    # one thread, as the in-process baseline: another thread count changes float reductions
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kill_entry.py"), "--stall-in-save", "6",
                             "--config", toml_for(cfg, tmp_path)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = []
        for line in proc.stdout:  # wait until it is stalled inside the save of step 6
            out.append(line)
            if "stalled in save of step 6" in line:
                break
        else:
            pytest.fail("the run ended without stalling:\n" + "".join(out[-20:]))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    folder = tmp_path / "t" / "checkpoint"
    assert (folder / "step-6.tmp" / ".metadata").is_file()  # every file written, not renamed
    assert list(complete_checkpoints(folder)) == [4]  # step 2 pruned by keep_latest_k = 1

    assert launch(1, cfg, tmp_path) == baseline[4:]  # resumes from step 4
    assert sorted(os.listdir(folder)) == ["step-10"]  # the half-written step-6.tmp is gone


def test_seed_dcp_and_hf_initial_loads(baseline, demo_dir, tmp_path):
    from titan_jepa.checkpoint.export import main as checkpoint_main
    from titan_jepa.checkpoint.hf import save_hf_checkpoint
    from titan_jepa.models.llama import build_model, model_args_for

    one_step = {"steps": 1}
    # the run every initial load should reproduce: weights initialised with seed 7
    reference = launch(1, config(tmp_path / "ref", demo_dir, training=one_step, job={"seed": 7}), tmp_path)
    assert reference[0] != baseline[0]

    seed_folder = tmp_path / "seed"
    seed_cfg = config(tmp_path / "s", demo_dir, job={"seed": 7}, checkpoint={"folder": str(seed_folder)})
    checkpoint_main(["--config", toml_for(seed_cfg, tmp_path), "--create-seed-checkpoint"])
    assert list(complete_checkpoints(seed_folder)) == [0]

    # a run with checkpoint.enable starts from the seed checkpoint (step 0, model only)
    from_seed = config(tmp_path / "a", demo_dir, training=one_step,
                       checkpoint={"enable": True, "folder": str(seed_folder)})
    assert launch(1, from_seed, tmp_path) == reference
    # the same folder as checkpoint.initial_load_path (DCP)
    from_dcp = config(tmp_path / "b", demo_dir, training=one_step,
                      checkpoint={"initial_load_path": str(seed_folder / "step-0")})
    assert launch(1, from_dcp, tmp_path) == reference

    # Hugging Face safetensors of the same weights
    args = model_args_for("debug")
    model = build_model(args, device="cpu")
    model.init_weights(seed=7)
    save_hf_checkpoint(model.state_dict(), args, tmp_path / "hf")
    from_hf = config(tmp_path / "c", demo_dir, training=one_step,
                     checkpoint={"initial_load_path": str(tmp_path / "hf"), "initial_load_format": "hf"})
    assert launch(1, from_hf, tmp_path) == pytest.approx(reference, rel=1e-6)
    # ... and under pipeline parallelism (each stage reads its own layers)
    from_hf_pp = dict(from_hf, job={**from_hf["job"], "dump_folder": str(tmp_path / "c_pp")},
                      parallelism={"pp": 2, "dp_shard": 1})
    assert launch(2, from_hf_pp, tmp_path) == pytest.approx(reference, rel=1e-5)

    # a checkpoint of another model shape is one clear error
    wider = config(tmp_path / "d", demo_dir, training=one_step, model={"vocab_size": 4096},
                   checkpoint={"initial_load_path": str(seed_folder / "step-0")})
    with pytest.raises(CheckpointError, match=r"different model .*tok_embeddings.weight \(2304, 128\) vs "
                                              r"model \(4096, 128\)"):
        launch(1, wider, tmp_path)


def test_missing_initial_load_path_is_one_line(demo_dir, tmp_path, capsys):
    from titan_jepa.train import main

    cfg = config(tmp_path, demo_dir, training={"steps": 1})
    with pytest.raises(SystemExit) as e:
        main(["--config", toml_for(cfg, tmp_path), "--checkpoint.initial_load_path", str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "initial_load_path" in err[0] and "does not exist" in err[0], err


def test_stp_predictor_is_a_head_saved_resumed_and_never_exported(demo_dir, tmp_path):
    """The STP linear predictor lives beside the model: its own "heads." entry (and optimizer
    state) in checkpoints, not in the export; resumes from new and old-format checkpoints are
    exact, and a predictor-less run refuses its checkpoint in one line."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save, torch_save_to_dcp

    stp = {"enable": True, "linear_predictor": True, "lambda": 0.5}
    ckpt = {"enable": True, "interval": 2, "keep_latest_k": 0, "model_only_export": True}
    cfg = config(tmp_path, demo_dir, training={"steps": 4}, stp=stp, checkpoint=ckpt)
    full = launch(1, cfg, tmp_path)
    folder = tmp_path / "t" / "checkpoint"
    md = FileSystemReader(str(folder / "step-2")).read_metadata().state_dict_metadata
    assert "heads.stp_predictor.weight" in md and "model.stp_predictor.weight" not in md
    assert "optimizer.state.stp_predictor.weight.exp_avg" in md
    exported = FileSystemReader(str(folder / "model-only" / "step-4")).read_metadata().state_dict_metadata
    assert "model.output.weight" in exported and not any("stp_predictor" in k for k in exported)

    cfg["checkpoint"]["load_step"] = 2
    assert launch(1, cfg, tmp_path) == full[2:]

    # the old layout: the predictor inside the model's state ("model.stp_predictor.weight")
    old = tmp_path / "old" / "t" / "checkpoint" / "step-2"
    shutil.copytree(folder / "step-2", old)
    dcp_to_torch_save(str(old), str(tmp_path / "state.pt"))
    state = torch.load(tmp_path / "state.pt", weights_only=False)
    state["model"].update(state.pop("heads"))
    for f in old.glob("*.distcp"):
        f.unlink()
    (old / ".metadata").unlink()
    (old / "manifest.json").unlink()  # as a checkpoint written before manifests existed
    torch.save(state, tmp_path / "state.pt")
    torch_save_to_dcp(str(tmp_path / "state.pt"), str(old))
    assert "model.stp_predictor.weight" in FileSystemReader(str(old)).read_metadata().state_dict_metadata
    old_cfg = config(tmp_path / "old", demo_dir, training={"steps": 4}, stp=stp, checkpoint=ckpt)
    assert launch(1, old_cfg, tmp_path) == full[2:]

    no_predictor = dict(cfg, stp={"enable": True, "lambda": 0.5})
    with pytest.raises(CheckpointError, match=r"cannot resume this run: stp.linear_predictor: True -> False; resume with"):
        launch(1, no_predictor, tmp_path)


def test_weights_load_is_strict_with_one_line_errors(tmp_path):
    """titan_jepa/checkpoint/weights.py: missing and unexpected keys are named; LoRA adapters a base
    model lacks keep their init; the format of a path is detected."""
    import torch.distributed.checkpoint as dcp

    from titan_jepa.config import Lora
    from titan_jepa.models.lora import apply_lora
    from titan_jepa.models.llama import ModelArgs, build_model
    from titan_jepa.checkpoint.weights import load_dcp, load_weights, resolve

    args = ModelArgs(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=64, multiple_of=16,
                     ffn_dim_multiplier=None, max_seq_len=32)
    src = build_model(args, "cpu")
    src.init_weights(seed=1)
    sd = dict(src.state_dict())
    dcp.save({"model": sd}, checkpoint_id=str(tmp_path / "full"), no_dist=True)
    sd.pop("norm.weight")
    dcp.save({"model": {**sd, "extra.weight": torch.zeros(2)}}, checkpoint_id=str(tmp_path / "bad"), no_dist=True)
    assert resolve(tmp_path / "full") == ("dcp", tmp_path / "full")

    target = build_model(args, "cpu")
    with pytest.raises(CheckpointError) as e:
        load_dcp(target, tmp_path / "bad", "checkpoint.initial_load_path")
    assert str(e.value) == (f"checkpoint.initial_load_path '{tmp_path / 'bad'}' was saved from a different "
                            f"model (missing ['norm.weight']; unexpected ['extra.weight']); use the model.flavor / "
                            f"model.* settings it was saved with (its model_args.json or the run's config.toml)")
    with pytest.raises(CheckpointError, match=r"is not a DCP folder \(no .metadata\); for safetensors set "
                                              r"checkpoint.initial_load_format = 'hf'"):
        load_weights(target, tmp_path, "checkpoint.initial_load_path", "dcp")

    # a base model into a LoRA model: every base weight loaded, the adapters keep their init
    lora = build_model(args, "meta")
    apply_lora(lora, Lora(enable=True, rank=2, target_modules=["wq"]))
    lora.to_empty(device="cpu")
    lora.init_weights(seed=0)
    a_before = lora.layers["0"].attention.wq.lora_a.weight.clone()
    loaded = load_weights(lora, tmp_path / "full", "base")
    assert loaded == set(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(lora.state_dict()[k], v), k
    assert torch.equal(lora.layers["0"].attention.wq.lora_a.weight, a_before)


def copy_run(src, dst):
    shutil.copytree(src / "t" / "checkpoint", dst / "t" / "checkpoint")
    return dst / "t" / "checkpoint"


# ---- integrity: manifests, corrupt checkpoints fall back, failing saves -----------------
def test_manifest_lists_every_file(fsdp_run):
    ckpt = fsdp_run[0] / "t" / "checkpoint"
    files = json.loads((ckpt / "step-10" / MANIFEST).read_text())["files"]
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "train_state.json", "rng/rank_1.pt",
            "dataloader/slot_1.json"} <= set(files)
    assert all(size == (ckpt / "step-10" / rel).stat().st_size for rel, (size, _) in files.items())
    assert verify_checkpoint(ckpt / "step-10") is None


def _truncate_file(f):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _truncate(step):
    _truncate_file(step / "__1_0.distcp")


def _garbage_metadata(step):
    (step / ".metadata").write_bytes(b"\x80\x04garbage" * 10)


def _missing(step):
    (step / "__0_0.distcp").unlink()


def _flipped_byte(step):
    f = step / "__0_0.distcp"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    (_truncate, "__1_0.distcp has"),
    (_garbage_metadata, ".metadata"),
    (_missing, "__0_0.distcp is missing"),
    (_flipped_byte, "does not match its checksum"),
])
def test_corrupt_newest_falls_back(fsdp_run, demo_dir, tmp_path, capsys, damage, reason):
    """The newest of the 2-rank FSDP checkpoints damaged: one warning, moved aside, resumed
    from step 5 with the uninterrupted run's losses (the 2-rank resume: test_fsdp_resume_is_exact)."""
    run, losses = fsdp_run
    ckpt = copy_run(run, tmp_path)
    damage(ckpt / "step-10")
    assert reason in verify_checkpoint(ckpt / "step-10")
    cfg = config(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 5})
    assert launch(1, cfg, tmp_path) == pytest.approx(losses[5:], rel=1e-4)
    warnings = [x for x in capsys.readouterr().out.splitlines() if "is corrupt" in x]
    assert len(warnings) == 1 and "step 10" in warnings[0] and "trying step 5" in warnings[0], warnings
    assert (ckpt / "step-10.corrupt").is_dir()  # moved aside, not deleted
    assert list(complete_checkpoints(ckpt)) == [5, 10]  # step 10 saved again by the resumed run


def test_none_left_is_one_line(fsdp_run, demo_dir, tmp_path):
    ckpt = copy_run(fsdp_run[0], tmp_path)
    _missing(ckpt / "step-10")
    _garbage_metadata(ckpt / "step-5")
    with pytest.raises(CheckpointError) as e:
        launch(1, config(tmp_path, demo_dir, checkpoint={"enable": True}), tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(ckpt) in msg and "--checkpoint.load_step" in msg, msg
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-10.corrupt", "step-5.corrupt"]


def test_explicit_load_step_corrupt_is_one_line(fsdp_run, demo_dir, tmp_path):
    ckpt = copy_run(fsdp_run[0], tmp_path)
    _truncate(ckpt / "step-5")
    with pytest.raises(CheckpointError, match=r"load_step = 5: .* is corrupt .*--checkpoint.load_step"):
        launch(1, config(tmp_path, demo_dir, checkpoint={"enable": True, "load_step": 5}), tmp_path)
    assert (ckpt / "step-5").is_dir()  # asked for by name: left in place


SAVE_FAILURES = {  # name: (the error the write raises, what the one line must say)
    "enospc": (lambda: OSError(errno.ENOSPC, "No space left on device"), "the disk is full; .*; free space there"),
    "edquot": (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk quota is exceeded; .*; free space"),
    "eacces": (lambda: OSError(errno.EACCES, "Permission denied"), r"not writable \(permission denied\); .*permissions"),
    "erofs": (lambda: OSError(errno.EROFS, "Read-only file system"), r"not writable \(read-only filesystem\)"),
    "enoent": (lambda: OSError(errno.ENOENT, "No such file or directory"), "folder was removed while the run wrote"),
    "lost_peer": (lambda: torch.distributed.DistNetworkError("Connection closed by peer [127.0.0.1]:1234"),
                  "another rank was lost during the save .*relaunch the run"),
}


@pytest.mark.parametrize("failure", list(SAVE_FAILURES))
def test_save_failures_say_what_happened_and_keep_the_previous_checkpoint(demo_dir, tmp_path, monkeypatch, failure):
    calls = {"n": 0}
    real = FileSystemWriter.write_data
    make_error, says = SAVE_FAILURES[failure]

    def failing(self, plan, planner):
        calls["n"] += 1
        if calls["n"] == 2:  # the save of step 4
            raise make_error()
        return real(self, plan, planner)

    monkeypatch.setattr(FileSystemWriter, "write_data", failing)
    cfg = config(tmp_path, demo_dir, training={"steps": 4},
                 checkpoint={"enable": True, "interval": 2, "keep_latest_k": 0})
    with pytest.raises(CheckpointError, match=f"step 4 .* failed: .*{says}") as e:
        launch(1, cfg, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "step 2 is intact" in msg, msg
    ckpt = tmp_path / "t" / "checkpoint"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2"]
    assert verify_checkpoint(ckpt / "step-2") is None
    monkeypatch.undo()
    if failure == "enospc":
        assert len(launch(1, cfg, tmp_path)) == 2  # resumes from step 2


def test_sizes_only_manifest(tmp_path):
    """checkpoint.checksums = false: sizes alone (no read-back); a flipped byte then passes,
    a truncated file does not."""
    import torch.distributed.checkpoint as dcp

    from titan_jepa.checkpoint.files import write_manifest

    dcp.save({"w": torch.arange(1000.0)}, storage_writer=dcp.FileSystemWriter(str(tmp_path)), no_dist=True)
    write_manifest(tmp_path, checksums=False)
    files = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert all(crc is None for _, crc in files.values()) and ".metadata" in files
    _flipped_byte(tmp_path)
    assert verify_checkpoint(tmp_path) is None
    _truncate_file(tmp_path / "__0_0.distcp")
    assert "__0_0.distcp has" in verify_checkpoint(tmp_path)


def test_checkpoint_with_positional_optimizer_state_still_resumes(demo_dir, tmp_path, monkeypatch):
    """Checkpoints written before pipeline parallelism keyed the optimizer's param groups by
    position (optimizer.param_groups.0.lr); they resume exactly like today's name-keyed ones."""
    import titan_jepa.checkpoint.manager as ckpt_mod
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    cfg = config(tmp_path, demo_dir, training={"steps": 4},
                 checkpoint={"enable": True, "interval": 2, "keep_latest_k": 0})
    with monkeypatch.context() as m:
        m.setattr(ckpt_mod, "OPTIM_OPTIONS", StateDictOptions())  # the old, positional layout
        full = launch(1, cfg, tmp_path)
    md = FileSystemReader(str(tmp_path / "t" / "checkpoint" / "step-2")).read_metadata().state_dict_metadata
    assert "optimizer.param_groups.0.lr" in md
    cfg["checkpoint"]["load_step"] = 2
    assert launch(1, cfg, tmp_path) == full[2:]
