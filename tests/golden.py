"""Golden losses: 10 steps of each debug config on 1 process, FSDP 2, TP 2 and PP 2 (1F1B).

Recorded before the one-forward / pluggable-objectives redesign (issue 23) and asserted
bit-identical after it by tests/test_golden.py; re-recorded on purpose twice since (the CPU
path's unpadded layers, 1.6e-7 at most; the version-independent truncated-normal init of
2026-12-04, which draws other initial weights; data.share_prefix, views reading their shared
template prefix once a row: LLM-JEPA's losses moved by at most 9.7e-8 relative in every
layout, the others not at all). Since then the one-process, FSDP and PP
losses are bit-identical on torch 2.11, 2.13 and 2.14; TP's drift on 2.11 (4e-4 relative by step 10).
The last bits depend on the CPU's vector instructions (torch and its BLAS pick their kernels by
them: an AVX2-only machine of the same kind gave losses 3e-8 relative away from the recorded
ones), so golden_losses.json holds one set per ``torch.backends.cpu.get_cpu_capability()``:
"AVX512" (recorded on the machines of 2026-12-05; taken to be AVX-512 ones, the only other
capability torch dispatches on x86, as an AVX2 machine differs) and "AVX2" (2026-12-06, the
same code). Machines of one capability can still differ: an AVX-512 machine with AMX and
AVX512-FP16 (2026-12-07) rounded 17 of the 20 runs up to 1.4e-7 relative away from the "AVX512"
set on unchanged code (checked on the commit before), so a capability may hold several sets,
"AVX512", "AVX512#2", ..., and a run must equal one of them bit for bit. A machine whose
capability has no set is held to rel 1e-6 of every set instead.
Re-record (only when a change is meant to alter the numbers, and say so in its commit; it
replaces every set of this machine's capability: re-record the other capability's set on
such a machine too, or delete it, so that no stale set stays):

    python tests/golden.py --record
    python tests/golden.py --record-variant   # numbers unchanged, this machine rounds otherwise:
                                              # adds its set beside its capability's others
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import ROOT, launch, train_each  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden_losses.json"
STEPS = 10
CONFIGS = {  # name: (train_configs file, overrides)
    "next_token": ("debug_cpu.toml", {}),
    "jepa_separate": ("debug_cpu_jepa.toml", {}),
    "jepa_shared_prefix": ("debug_cpu_jepa.toml", {"jepa": {"views": "shared_prefix"}}),
    "stp": ("debug_cpu_stp.toml", {}),
    "lora": ("debug_cpu.toml", {"lora": {"enable": True, "rank": 4, "alpha": 8.0}}),
}
LAYOUTS = {  # name: (processes, [parallelism] overrides)
    "1proc": (1, {"dp_shard": 1}),
    "fsdp2": (2, {"dp_shard": 2}),
    "tp2": (2, {"dp_shard": 1, "tp": 2}),
    "pp2": (2, {"dp_shard": 1, "pp": 2, "pp_schedule": "1F1B"}),
}


def config(name: str, layout: str, run_dir: Path, data_dir: Path) -> dict:
    """The config dict of one golden run: the train_configs file with its data in data_dir."""
    file, overrides = CONFIGS[name]
    cfg = tomllib.loads((ROOT / "train_configs" / file).read_text())
    cfg["tokenizer"]["path"] = str(ROOT / cfg["tokenizer"]["path"])
    cfg["data"]["path"] = str(data_dir / Path(cfg["data"]["path"]).name)
    cfg["job"].update(name=f"{name}_{layout}", dump_folder=str(run_dir))
    cfg["training"]["steps"] = STEPS
    cfg["metrics"] = {"log_freq": STEPS, "enable_tensorboard": False, "flop_counter_steps": 0}
    cfg["parallelism"] = dict(LAYOUTS[layout][1])
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run(name: str, layout: str, run_dir: Path, data_dir: Path) -> list[float]:
    return launch(LAYOUTS[layout][0], config(name, layout, run_dir, data_dir), run_dir)


def run_all(run_dir: Path, data_dir: Path) -> dict[str, dict[str, list[float]]]:
    """{config: {layout: losses}} for every config and layout: the one-process runs in this
    process, then every 2-process run in one launch (start-up is much of a run's time)."""
    out = {name: {"1proc": run(name, "1proc", run_dir, data_dir)} for name in CONFIGS}
    two = [(name, lay) for name in CONFIGS for lay, (world, _) in LAYOUTS.items() if world == 2]
    got = launch(2, {"runs": [config(name, lay, run_dir, data_dir) for name, lay in two]}, run_dir, fn=train_each)
    for (name, lay), losses in zip(two, got):
        out[name][lay] = losses
    return out


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def recorded() -> dict[str, dict[str, list[float]]]:
    """{capability: {"config/layout": losses}}."""
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


def variants(capability: str, sets: dict | None = None) -> dict[str, dict[str, list[float]]]:
    """The recorded sets of one capability: "AVX512", "AVX512#2", ..."""
    sets = recorded() if sets is None else sets
    return {k: v for k, v in sets.items() if k.split("#")[0] == capability}


def record(variant: bool = False) -> None:
    import tempfile

    import torch

    from helpers import demo_data

    torch.set_num_threads(1)  # as tests/conftest.py
    with tempfile.TemporaryDirectory() as tmp:
        data = demo_data(Path(tmp) / "demo")
        out = {f"{n}/{lay}": losses for n, layouts in run_all(Path(tmp) / "runs", data).items()
               for lay, losses in layouts.items()}
    sets, cap = recorded(), cpu_capability()
    same = [k for k, v in variants(cap, sets).items() if v == out]
    if variant and same:
        print(f"this machine's losses are already recorded as {same[0]}: nothing written")
        return
    if variant:
        key = next(f"{cap}#{i}" for i in range(2, 100) if f"{cap}#{i}" not in sets)
    else:
        for k in variants(cap, sets):
            del sets[k]
        key = cap
    sets[key] = out
    GOLDEN.write_text(json.dumps(sets, indent=1) + "\n")
    print(f"wrote {GOLDEN}: {len(out)} runs of {STEPS} steps as {key} (sets now: {', '.join(sets)})")


if __name__ == "__main__" and sys.argv[1:] in (["--record"], ["--record-variant"]):
    record(variant=sys.argv[1:] == ["--record-variant"])
