"""torchtitan checkpoints in both namings: a DCP folder written (with dcp.save) under the
post-v0.2 names (attention.qkv_linear.w{q,k,v}, lm_head) loads through
checkpoint.initial_load_path and tools/convert_hf.py to the same weights as the v0.2 naming."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp

from helpers import ROOT, launch, tiny_config
from titan_jepa.checkpoint import torchtitan_names as tn
from titan_jepa.models.llama import build_model, model_args_for

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_mapping_round_trip():
    ours = ["tok_embeddings.weight", "layers.0.attention.wq.weight", "layers.11.attention.wv.weight",
            "layers.0.attention.wo.weight", "layers.3.feed_forward.w1.weight", "norm.weight", "output.weight",
            "model.layers.2.attention.wk.weight", "model.output.weight"]
    new = [tn.to_new(k) for k in ours]
    assert new == ["tok_embeddings.weight", "layers.0.attention.qkv_linear.wq.weight",
                   "layers.11.attention.qkv_linear.wv.weight", "layers.0.attention.wo.weight",
                   "layers.3.feed_forward.w1.weight", "norm.weight", "lm_head.weight",
                   "model.layers.2.attention.qkv_linear.wk.weight", "model.lm_head.weight"]
    assert [tn.to_ours(k) for k in new] == ours and [tn.to_ours(k) for k in ours] == ours
    assert tn.naming(new) == tn.NEW and tn.naming(ours) == tn.V02


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The debug model's seeded weights as torchtitan model-only DCP folders, both namings."""
    tmp = tmp_path_factory.mktemp("tt")
    model = build_model(model_args_for("debug"), device="cpu")
    model.init_weights(seed=123)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if "rope" not in k}
    out = {}
    for name, fn in (("v02", str), ("new", tn.to_new)):
        out[name] = tmp / name
        dcp.save({fn(k): v for k, v in sd.items()}, storage_writer=dcp.FileSystemWriter(str(out[name])),
                 no_dist=True)
    assert tn.dcp_naming(out["new"]) == tn.NEW and tn.dcp_naming(out["v02"]) == tn.V02
    return out, sd


def _losses_from(folder, demo_dir, tmp_path):
    cfg = tiny_config(tmp_path / folder.name, demo_dir, training={"steps": 2},
                      checkpoint={"initial_load_path": str(folder)})
    return launch(1, cfg, tmp_path)


def test_initial_load_both_namings(folders, demo_dir, tmp_path):
    out, _ = folders
    a = _losses_from(out["v02"], demo_dir, tmp_path)
    b = _losses_from(out["new"], demo_dir, tmp_path)
    assert a == b
    # and not the run's own seeded init (job.seed 0): the weights really came from the folder
    plain = launch(1, tiny_config(tmp_path / "plain", demo_dir, training={"steps": 2}), tmp_path)
    assert plain[0] != a[0]


def test_convert_hf_reads_the_new_naming(folders, tmp_path):
    from titan_jepa.checkpoint.hf import load_hf_safetensors

    out, sd = folders
    dst = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "tools/convert_hf.py", "--to-hf", "--src", str(out["new"]),
                           "--dst", str(dst), "--flavor", "debug"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    hf = load_hf_safetensors(dst)
    assert torch.equal(hf["lm_head.weight"], sd["output.weight"])
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], sd["layers.0.attention.wv.weight"])
