"""tools/gpu_bench.py's CPU smoke modes, so the GPU evidence kit cannot rot between GPU loans.

The GPU machine has neither ``datasets`` nor ``torchao``: both are made unimportable here,
so an import of either anywhere on the bench's path fails the test."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import gpu_bench  # noqa: E402
from demo_data import regex_sample  # noqa: E402

BENCH_NUMBERS = {  # section: the fields every configuration that ran must give as finite numbers
    "env": ("tflops",),
    "a_flex_vs_sdpa": ("loss_sdpa", "loss_flex", "loss_rel_diff"),
    "b_throughput": ("tokens_per_s", "step_s", "mfu_measured_peak"),
    "c_jepa_overhead": ("step_s", "ratio_to_ntp"),
    "d_float8": ("tokens_per_s", "step_s"),
    "f_smollm2": ("step_s", "loss"),
    "g_cp_attention": ("cp1_flex_out_rel", "cp1_sdpa_out_rel"),
}


@pytest.fixture
def gpu_machine_imports(monkeypatch):
    """What the H200 machine lacks: importing these raises ImportError."""
    for name in ("datasets", "torchao", "torchao.float8"):
        monkeypatch.setitem(sys.modules, name, None)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_smoke_bench_and_repro(tmp_path, gpu_machine_imports, smollm2_hf):
    out = tmp_path / "out"
    gpu_bench.main(["--smoke", "--out", str(out), "--work-dir", str(tmp_path / "work"),
                    "--smollm2-dir", str(smollm2_hf)])
    data = json.loads((out / "gpu_bench.json").read_text())  # strict JSON: no NaN
    assert data["schema"] == gpu_bench.SCHEMA and data["mode"] == "smoke" and data["finished"]
    assert set(data["sections"]) == set(gpu_bench.SECTIONS) | {"e_peak_memory"}
    assert data["env"]["datasets"].startswith("not importable")
    for name, fields in BENCH_NUMBERS.items():
        sec = data["sections"][name]
        assert sec["status"] in ("ok", "skipped"), (name, sec.get("error"), sec.get("traceback"))
        assert sec["configs"], name
        for c in sec["configs"]:  # numbers, or a stated reason
            assert "error" not in c, (name, c)
            assert isinstance(c.get("skipped"), str) or all(finite(c.get(f)) for f in fields), (name, c)
    a = {c["config"]: c for c in data["sections"]["a_flex_vs_sdpa"]["configs"]}
    assert a["float32 fwd"]["loss_rel_diff"] < 1e-5 and a["bfloat16 fwd"]["loss_rel_diff"] < 2e-2
    assert a["float32 fwd"]["backward"] == gpu_bench.FLEX_NO_CPU_BACKWARD
    b = {c["model"]: c for c in data["sections"]["b_throughput"]["configs"]}
    assert b["ours"]["ratio_ours_hf"] == pytest.approx(b["hf"]["step_s"] / b["ours"]["step_s"])
    assert b["ours"]["params"] == b["hf"]["params"] > 0  # the same shape
    f = {x["config"]: x for x in data["sections"]["f_smollm2"]["configs"]}
    assert set(f) == {"ours next-token", "transformers next-token", "ours JEPA separate", "reference 3 groups",
                      "reference 2 groups"}, f
    # the same model and samples on both sides: the same losses
    assert f["ours next-token"]["loss"] == pytest.approx(f["transformers next-token"]["loss"], rel=1e-5)
    for ref in ("reference 3 groups", "reference 2 groups"):
        assert f["ours JEPA separate"]["loss"] == pytest.approx(f[ref]["loss"], rel=1e-5)
    c = [x for x in data["sections"]["c_jepa_overhead"]["configs"] if "skipped" not in x]
    assert [x["config"] for x in c] == ["next-token", "jepa separate", "jepa shared_prefix", "jepa_ratio 0.25"]
    assert c[0]["ratio_to_ntp"] == 1.0 and all(x["backend"] == "sdpa" for x in c)
    g = data["sections"]["g_cp_attention"]["configs"]  # CP's attention at cp 1 = the model's (fp32 here)
    assert [x["config"] for x in g] == ["S 256"] and g[0]["cp1_flex_out_rel"] < 1e-5 > g[0]["cp1_sdpa_out_rel"]
    d = data["sections"]["d_float8"]["configs"]
    assert d[0]["skipped"].startswith("skipped: torchao not importable")
    ran = sum(1 for n in BENCH_NUMBERS for x in data["sections"][n]["configs"] if "skipped" not in x)
    e = data["sections"]["e_peak_memory"]["configs"]
    assert len(e) == ran and all("peak_mem_gib" in x for x in e)
    md = (out / "gpu_bench.md").read_text()
    assert "## b_throughput: ok" in md and "| debug ours | ours | 64 |" in md

    # --repro --smoke: 1 seed per arm, a handful of lines, through train() and the eval code
    rows = [regex_sample(__import__("random").Random(i)) for i in range(30)]
    data_dir = tmp_path / "carry"
    data_dir.mkdir()
    (data_dir / "synth_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (data_dir / "synth_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    gpu_bench.main(["--repro", "--smoke", "--data-dir", str(data_dir), "--out", str(out),
                    "--work-dir", str(tmp_path / "rwork")])
    rep = json.loads((out / "gpu_repro.json").read_text())
    assert [(r["arm"], r["seed"]) for r in rep["runs"]] == [(a, 82) for a in gpu_bench.REPRO_ARMS]
    for r in rep["runs"]:
        assert "skipped" not in r, r
        assert r["steps"] > 0 and finite(r["final_loss"])
        assert 0 <= r["exact"] <= r["startswith"] <= 100
    assert [s["arm"] for s in rep["summary"]] == list(gpu_bench.REPRO_ARMS)
    assert not (tmp_path / "rwork" / "repro" / "next-token_s82").exists()  # run folders removed


def test_budgets_skip_configurations_with_the_reason(tmp_path, gpu_machine_imports):
    out = tmp_path / "out"
    # 21 s in all, 20 of them kept for the report: b gets 1 s, and needs 5
    gpu_bench.main(["--smoke", "--sections", "b_throughput", "--budget-scale", "0.01", "--hard-limit-s", "21",
                    "--out", str(out), "--work-dir", str(tmp_path / "work")])
    sec = json.loads((out / "gpu_bench.json").read_text())["sections"]["b_throughput"]
    assert sec["status"] == "skipped"
    assert [c["config"] for c in sec["configs"]] == ["debug ours", "debug hf"]
    assert all("time budget (1 s) has" in c["skipped"] for c in sec["configs"])


def test_repro_without_data_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="tools/gpu_prepare.sh"):
        gpu_bench.main(["--repro", "--smoke", "--data-dir", str(tmp_path), "--out", str(tmp_path)])
