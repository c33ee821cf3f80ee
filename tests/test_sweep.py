"""tools/sweep.py and tools/stats.py: the t-test against independent references, the
report writers on fake results, and one tiny end-to-end sweep on CPU."""

import json
import shutil
import math
import os
import subprocess
import sys

import pytest

from helpers import ROOT, TOKENIZER
from stats import betainc, mean_std, paired_t_test_one_tailed, t_cdf, t_sf

sys.path.insert(0, str(ROOT / "tools"))
import sweep  # noqa: E402


# ---- statistics ---------------------------------------------------------------------------
def _t_sf_by_integration(t: float, df: int, n: int = 20_000) -> float:
    """P(T > t) by Simpson's rule on the t density, after x = tan(u) (finite interval)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def f(u):  # density at tan(u) times dx/du
        x = math.tan(u)
        return c * (1 + x * x / df) ** (-(df + 1) / 2) / math.cos(u) ** 2

    a, b = math.atan(t), math.pi / 2 - 1e-12
    h = (b - a) / n
    s = f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n))
    return s * h / 3


def test_mean_std():
    assert mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx((5.0, math.sqrt(32 / 7)))
    m, s = mean_std([3.0])
    assert m == 3.0 and math.isnan(s)
    assert all(math.isnan(v) for v in mean_std([]))


def test_t_distribution_against_closed_forms_tables_and_integration():
    for t in (-3.0, -0.4, 0.0, 0.7, 2.5, 30.0):
        assert t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, abs=1e-13)  # Cauchy
        assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(t * t + 2)), abs=1e-13)
        assert t_cdf(t, 3) + t_sf(t, 3) == pytest.approx(1.0)
    # one-tailed critical values from printed t tables
    for t, df, p in ((2.015048, 5, 0.05), (1.812461, 10, 0.05), (3.746947, 4, 0.01), (2.776445, 4, 0.025)):
        assert t_sf(t, df) == pytest.approx(p, abs=1e-6)
    for t, df in ((0.5, 3), (1.9, 4), (3.2, 7), (-1.1, 9)):
        assert t_sf(t, df) == pytest.approx(_t_sf_by_integration(t, df), abs=1e-9)
    # binomial identity: I_x(a, n-a+1) = P(Binomial(n, x) >= a)
    assert betainc(2, 3, 0.4) == pytest.approx(sum(math.comb(4, j) * 0.4**j * 0.6 ** (4 - j) for j in (2, 3, 4)))


def _t_sf_df4(t):  # closed form for 4 degrees of freedom, x = t / sqrt(4 + t^2)
    x = t / math.sqrt(4 + t * t)
    return 0.5 - x / 2 * (1 + (1 - x * x) / 2)


# (arm, baseline, t, p): t computed by hand in exact fractions, p = P(T_{n-1} > t) from the
# closed forms for 2 and 4 degrees of freedom (also checked by integration below)
T1, T2 = 2.065460973307911, 4.469071798452787
PAIRED = [
    ([1.0, 2.0, 3.5], [0.5, 1.7, 2.0], T1, 0.5 - T1 / (2 * math.sqrt(T1 * T1 + 2))),
    ([0.60, 0.62, 0.59, 0.61, 0.63], [0.55, 0.58, 0.57, 0.52, 0.56], T2, _t_sf_df4(T2)),
]


def test_paired_t_test_reference_values():
    for a, b, t_ref, p_ref in PAIRED:
        t, p = paired_t_test_one_tailed(a, b)
        assert t == pytest.approx(t_ref, rel=1e-8)
        assert p == pytest.approx(p_ref, abs=1e-12)
        assert p == pytest.approx(_t_sf_by_integration(t_ref, len(a) - 1), abs=1e-9)
        # swapping the arms tests the other tail
        t2, p2 = paired_t_test_one_tailed(b, a)
        assert t2 == pytest.approx(-t) and p2 == pytest.approx(1 - p)


def test_paired_t_test_matches_scipy_when_present():
    scipy_stats = pytest.importorskip("scipy.stats")
    for a, b, _, _ in PAIRED:
        ref = scipy_stats.ttest_rel(a, b, alternative="greater")
        t, p = paired_t_test_one_tailed(a, b)
        assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue, abs=1e-12)


def test_paired_t_test_edge_cases():
    assert paired_t_test_one_tailed([1.0, 2.0], [0.5, 1.5]) == (math.inf, 0.0)  # constant gain
    assert paired_t_test_one_tailed([1.0, 2.0], [1.5, 2.5])[1] == 1.0  # constant loss
    t, p = paired_t_test_one_tailed([1.0, 2.0], [1.0, 2.0])  # no difference at all
    assert math.isnan(t) and p == 1.0
    assert all(math.isnan(v) for v in paired_t_test_one_tailed([1.0], [0.0]))
    with pytest.raises(ValueError):
        paired_t_test_one_tailed([1.0, 2.0], [1.0])


# ---- arms and reports ---------------------------------------------------------------------
def test_grid_makes_the_cartesian_product_and_bad_overrides_are_one_line():
    grid = sweep.parse_grid(["jepa.lambda=1,2", "jepa.k=1,3"])
    arms = sweep.build_arms(grid, [("jepa.enable", "false")])
    assert [a.name for a in arms] == ["baseline", "jepa.lambda=1 jepa.k=1", "jepa.lambda=1 jepa.k=3",
                                      "jepa.lambda=2 jepa.k=1", "jepa.lambda=2 jepa.k=3"]
    assert len({a.slug for a in arms}) == 5 and arms[0].baseline
    assert [a.name for a in sweep.build_arms([], None)] == ["config"]
    for bad in (["lambda=1"], ["jepa.lambda"], ["jepa.lambda="], ["jepa.k=1", "jepa.k=2"]):
        with pytest.raises(sweep.SweepError):
            sweep.parse_grid(bad)


def _fake_records():
    acc = {"baseline": [0.50, 0.55, 0.52], "jepa.lambda=1": [0.60, 0.62, 0.58], "jepa.lambda=2": [0.51]}
    steps = {"baseline": [221, 221, 221], "jepa.lambda=1": [247, 246, 246], "jepa.lambda=2": [-1]}
    return [{"arm": arm, "seed": seed, "accuracy": a, "final_loss": 1.0 + a, "correct": 0, "n": 10, "final_step": st}
            for arm, accs in acc.items() for seed, a, st in zip((82, 23, 37), accs, steps[arm])]


def test_report_writers_on_fake_results(tmp_path):
    arms = sweep.build_arms(sweep.parse_grid(["jepa.lambda=1,2"]), [("jepa.enable", "false")])
    records = _fake_records()
    meta = {"name": "fake", "config": "x.toml", "seeds": [82, 23, 37], "eval_data": "t.jsonl",
            "command": "python tools/sweep.py --config x.toml"}
    summary = sweep.write_reports(tmp_path, arms, records, meta)
    by = {s["arm"]: s for s in summary}
    assert by["baseline"]["n"] == 3 and by["baseline"]["p"] is None
    assert by["jepa.lambda=1"]["accuracy_mean"] == pytest.approx(0.60)
    assert by["jepa.lambda=1"]["accuracy_std"] == pytest.approx(0.02)
    t, p = paired_t_test_one_tailed([0.60, 0.62, 0.58], [0.50, 0.55, 0.52])
    assert by["jepa.lambda=1"]["p"] == pytest.approx(p) and p < 0.05
    assert by["jepa.lambda=2"]["n_pairs"] == 1 and math.isnan(by["jepa.lambda=2"]["p"])

    md = (tmp_path / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "`" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["baseline", "jepa.lambda=1", "jepa.lambda=2"]
    assert "52.33 ± 2.52" in rows[0] and "60.00 ± 2.00" in rows[1] and f"{p:.4g}" in rows[1]
    assert "| 3 | 221 | 52.33" in rows[0] and "| 3 | 246-247 | 60.00" in rows[1] and "| 1 | — | 51.00" in rows[2]
    assert "python tools/sweep.py --config x.toml" in md
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 7 and data["summary"][2]["p"] is None  # nan -> null
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_tool_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    import plot_metrics
    import sweep_report

    assert sweep.write_reports is sweep_report.write_reports  # the reports live in sweep_report.py
    for main, argv, message in (
            (sweep.main, ["--config", str(tmp_path / "nope.toml"), "--eval-data", "x"],
             f"error: --config '{tmp_path / 'nope.toml'}' does not exist"),
            (plot_metrics.main, [str(tmp_path / "nope")],
             f"error: {tmp_path / 'nope'} does not exist; pass a run's metrics.jsonl or its run folder")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines() == [message]


# ---- end to end ---------------------------------------------------------------------------
def _sweep(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "tools" / "sweep.py"), *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_tiny_sweep_end_to_end(tmp_path, demo_dir):
    out = tmp_path / "sweep"
    args = ["--config", ROOT / "train_configs" / "debug_cpu_jepa.toml", "--seeds", 82, 23,
            "--baseline", "jepa.enable=false", "--grid", "jepa.lambda=1",
            "--eval-data", demo_dir / "regex_test.jsonl", "--eval-limit", 4, "--max-new-tokens", 6,
            "--out", out, "--jobs", 2,
            "--set", "training.steps=2", "metrics.flop_counter_steps=0", "metrics.enable_tensorboard=false",
            f"data.path={demo_dir / 'regex_train.jsonl'}", f"tokenizer.path={TOKENIZER}",
            "training.seq_len=128", "training.global_batch_size=2", "training.local_batch_size=2"]
    p = _sweep(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    progress = [line for line in p.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and all("accuracy" in line and "final loss" in line for line in progress)
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).is_file()
    md = (out / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "`" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["baseline", "jepa.lambda=1"]
    assert "--baseline jepa.enable=false" in md
    data = json.loads((out / "results.json").read_text())
    assert {(r["arm"], r["seed"]) for r in data["runs"]} == {
        ("baseline", 82), ("baseline", 23), ("jepa.lambda=1", 82), ("jepa.lambda=1", 23)}
    for r in data["runs"]:
        assert r["n"] == 4 and 0.0 <= r["accuracy"] <= 1.0 and r["final_step"] == 2
        assert math.isfinite(r["final_loss"]) and "model-only" in r["checkpoint"]
        assert "skipped" not in r  # a property of one invocation, printed, not recorded
        curve = [json.loads(x) for x in (out / "evals" / f"{r['run']}.metrics.jsonl").read_text().splitlines()]
        assert r["train_seconds"] == round(sum(x["interval_s"] for x in curve if "interval_s" in x), 2) > 0
    assert (out / "evals" / "baseline_s82.metrics.jsonl").read_text() == \
        (out / "runs" / "baseline_s82" / "metrics.jsonl").read_text()  # the curve, committed with the eval
    # the JEPA arm trained with the JEPA loss on top: its logged loss is the larger one
    loss = {(r["arm"], r["seed"]): r["final_loss"] for r in data["runs"]}
    assert loss[("jepa.lambda=1", 82)] > loss[("baseline", 82)]

    # a second start refuses to overwrite; --resume reuses every evaluated run
    p = _sweep(*args, cwd=tmp_path)
    assert p.returncode == 2 and "--resume" in p.stderr
    p = _sweep(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("resumed: already evaluated") == 4
    # run folders are not committed: a resume without them keeps the recorded final losses
    shutil.rmtree(out / "runs")
    p = _sweep(*args, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    again = json.loads((out / "results.json").read_text())
    assert {r["run"]: r["final_loss"] for r in again["runs"]} == {r["run"]: r["final_loss"] for r in data["runs"]}
    assert again["runs"] == data["runs"]  # the same record, whichever invocation reads it

    # an evaluation file lost with its machine: --report-only keeps the recorded result, marked,
    # trains nothing, and flips_report leaves that pair out
    (out / "evals" / "baseline_s23.json.gz").unlink()
    p = _sweep(*args, "--report-only", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (out / "runs").exists() and "baseline_s23.json.gz" not in os.listdir(out / "evals")
    kept = json.loads((out / "results.json").read_text())
    assert kept["command"] == again["command"]  # the sweep's command, not the report's
    (lost,) = [r for r in kept["runs"] if r.get("evaluation_missing")]
    assert lost["run"] == "baseline_s23" and lost["accuracy"] == \
        next(r["accuracy"] for r in data["runs"] if r["run"] == "baseline_s23")
    assert [s["n"] for s in kept["summary"]] == [2, 2]
    md = (out / "results.md").read_text()
    assert "evaluation file (the per-item predictions) is missing" in md and "*" in md.split("## Per seed")[1]
    assert "baseline_s23: accuracy" in p.stdout and "missing" in p.stdout
    sys.path.insert(0, str(ROOT / "tools"))
    import flips_report
    assert [r["seed"] for r in flips_report.flips(out)] == [82]  # seed 23's pair has no predictions


def test_a_run_stopped_early_is_not_evaluated_as_finished(tmp_path, demo_dir):
    """A trainer stopped by SIGTERM saves its step and exits 0; the sweep must not take that
    checkpoint for the run's final one (here: a 4-step run whose last save is step 2)."""
    from helpers import launch, tiny_config

    launch(1, tiny_config(tmp_path, demo_dir, training={"steps": 4},
                          checkpoint={"enable": True, "interval": 2, "model_only_export": True}), tmp_path)
    run, folder = tmp_path / "t", tmp_path / "t" / "checkpoint"
    assert sweep.final_checkpoint(run) == folder / "model-only" / "step-4"
    shutil.rmtree(folder / "model-only")
    shutil.rmtree(folder / "step-4")  # what a run preempted after step 2 leaves
    with pytest.raises(sweep.SweepError, match=r"^t stopped after step 2 of 4 \(preempted\?\); rerun with --resume"):
        sweep.final_checkpoint(run)


def test_training_seconds_sums_every_invocation_of_a_resumed_run(tmp_path):
    m = tmp_path / "metrics.jsonl"
    assert sweep.training_seconds(m) is None
    rows = [{"step": 10, "loss": 1.0, "interval_s": 30.5}, {"step": 10, "val/loss": 0.9},
            {"step": 20, "loss": 0.8, "interval_s": 20.0},
            {"step": 30, "loss": 0.7, "interval_s": 41.25}]  # a resumed invocation appends its rows
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sweep.training_seconds(m) == 91.75
    m.write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")  # logged before interval_s existed
    assert sweep.training_seconds(m) is None


def test_make_subset_deterministic_and_nested(tmp_path):
    import make_subset

    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(160)))
    (a16, n16), (a4, n4) = make_subset.write_subsets(src, ["1/16", "1/4"], 0, tmp_path / "a")
    (b16, _), = make_subset.write_subsets(src, ["1/16"], 0, tmp_path / "b")
    (c16, _), = make_subset.write_subsets(src, ["1/16"], 1, tmp_path / "c")
    ids = {p: [json.loads(x)["i"] for x in p.read_text().splitlines()] for p in (a16, a4, b16, c16)}
    assert (n16, n4) == (10, 40) and a16.name == "train_1of16.jsonl" and a4.name == "train_1of4.jsonl"
    assert ids[a16] == ids[b16] != ids[c16]  # the same seed, the same lines
    assert set(ids[a16]) < set(ids[a4]) and ids[a4] == sorted(ids[a4])  # nested, in file order
    with pytest.raises(make_subset.UserError, match="must be in"):
        make_subset.write_subsets(src, ["2"], 0, tmp_path / "d")


def test_flips_report_counts_items_each_way(tmp_path):
    import gzip

    import flips_report

    def evals(name, right):
        preds = [{"index": i, "prediction": "", "gold": "", "correct": i in right} for i in range(6)]
        with gzip.open(tmp_path / "evals" / f"{name}.json.gz", "wt") as f:
            json.dump({"accuracy": len(right) / 6, "predictions": preds}, f)
        return {"arm": name.rsplit("_s", 1)[0], "seed": int(name.rsplit("_s", 1)[1]), "run": name,
                "eval_json": f"x/evals/{name}.json.gz", "accuracy": len(right) / 6}

    (tmp_path / "evals").mkdir()
    runs = [evals("baseline_s1", {0, 1, 2}), evals("jepa_s1", {1, 2, 3, 4}), evals("jepa_s2", {0})]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    rows = flips_report.flips(tmp_path)
    assert rows == [{"arm": "jepa", "seed": 1, "n": 6, "gained": 2, "lost": 1, "net": 1}]  # seed 2: no baseline
    assert "| jepa | 1 | 6 | 2 | 1 | +1 |" in flips_report.markdown(rows, "baseline")

    # the paired accuracy test against any arm, here a control that gets one more item per seed
    runs += [evals("baseline_s2", {0, 1}), evals("ctl_s1", {0, 1, 2, 3}), evals("ctl_s2", {0, 1, 2}),
             evals("ctl_s3", {0})]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    (row,) = [r for r in flips_report.paired(tmp_path, "ctl") if r["arm"] == "baseline"]
    assert row["seeds"] == [1, 2] and row["diffs"] == pytest.approx([-100 / 6] * 2)
    assert row["p"] == 1.0  # a constant loss is no evidence for "better"
    (row,) = [r for r in flips_report.paired(tmp_path, "baseline") if r["arm"] == "jepa"]
    diffs = [100 * (4 - 3) / 6, 100 * (1 - 2) / 6]
    assert row["diffs"] == pytest.approx(diffs) and row["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert row["t"] == pytest.approx(0.0, abs=1e-12) and row["p"] == pytest.approx(0.5)
    assert "| jepa | 1 2 | +16.67, -16.67 | +0.00 ± 23.57 | 0.000 | 0.5 |" in flips_report.paired_markdown(
        flips_report.paired(tmp_path, "baseline"), "baseline")
    with pytest.raises(SystemExit, match=r"no arm named 'nope' .*; arms: baseline, ctl, jepa$"):
        flips_report.paired(tmp_path, "nope")


def test_slot_envs_split_or_share_the_gpus(monkeypatch):
    import torch
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert sweep.slot_envs(1, 1) == [{}]
    assert sweep.slot_envs(2, 1) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}]
    with pytest.raises(sweep.SweepError, match=r"--jobs 3 x --nproc 1 needs 3 GPUs, 2 are visible; .*--share-gpus"):
        sweep.slot_envs(3, 1)
    assert sweep.slot_envs(5, 1, share_gpus=True) == [{}] * 5  # every run sees both GPUs
    with pytest.raises(sweep.SweepError, match=r"--nproc 3 needs 3 GPUs, 2 are visible"):
        sweep.slot_envs(2, 3, share_gpus=True)


def test_drop_checkpoints_deletes_the_run_checkpoints_only(tmp_path, demo_dir):
    from helpers import tiny_config, write_toml

    run = tmp_path / "runs" / "a_s1"
    cfg = tiny_config(tmp_path / "runs", demo_dir, job={"name": "a_s1", "dump_folder": str(tmp_path / "runs")})
    write_toml(cfg, run / "config.toml")
    for f in ("checkpoint/step-2/model.pt", "checkpoint/model-only/step-2/model.safetensors"):
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_bytes(b"x")
    (run / "metrics.jsonl").write_text("{}\n")
    sweep.drop_checkpoints(run)
    assert sorted(p.name for p in run.iterdir()) == ["config.toml", "metrics.jsonl"]
    # a checkpoint folder outside the run (an absolute checkpoint.folder) is left alone
    elsewhere = tmp_path / "shared_ckpt"
    (elsewhere / "step-1").mkdir(parents=True)
    write_toml({**cfg, "checkpoint": {"folder": str(elsewhere)}}, run / "config.toml")
    sweep.drop_checkpoints(run)
    assert (elsewhere / "step-1").is_dir()


def test_collapse_report_picks_the_steps_and_the_last_and_names_runs_without_jepa(tmp_path):
    import collapse_report
    rows = [{"step": s, "loss": 1.0, "jepa_cos": 0.9 + s / 1000, "jepa_pred_erank": 3.0 - s / 100,
             "jepa_target_erank": 4.0 - s / 100} for s in (10, 20, 40, 60, 77)]
    jepa = tmp_path / "llm-jepa_s1.metrics.jsonl"
    jepa.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ntp = tmp_path / "baseline_s1.metrics.jsonl"
    ntp.write_text(json.dumps({"step": 10, "loss": 1.0}) + "\n")
    rep = collapse_report.collapse(jepa, [10, 50])
    # 50 was not logged: the first step after it (60); the last step (77) is added
    assert rep["run"] == "llm-jepa_s1" and [p[0] for p in rep["points"]] == [10, 60, 77]
    assert rep["points"][1] == pytest.approx((60, 0.96, 2.4, 3.4))
    md = collapse_report.markdown([rep, collapse_report.collapse(ntp, [10])])
    assert "| llm-jepa_s1 | 77 | 0.9770 | 2.23 | 3.23 |" in md
    assert "| baseline_s1 | — | no JEPA metrics | | |" in md
    with pytest.raises(SystemExit, match="does not exist"):
        collapse_report.collapse(tmp_path / "missing.jsonl", [10])
    jepa.write_text("{not json\n")
    with pytest.raises(SystemExit, match=r"llm-jepa_s1.metrics.jsonl:1 is not JSON"):
        collapse_report.collapse(jepa, [10])


def test_resumed_runs_keep_the_final_loss_recorded_before_the_sweep_rewrote_its_report(tmp_path):
    """A resumed sweep whose run folders are gone takes each run's final loss from the
    results.json as it was when the sweep started, though it rewrites that file after
    every run (it used to lose every loss after the first)."""
    runs = [{"run": f"a_s{s}", "final_loss": 0.5 + s, "final_step": 9} for s in range(3)]
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs}))
    earlier = sweep.earlier_runs(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"runs": runs[:1]}))  # the first rewrite
    assert [sweep._recorded_loss(earlier, f"a_s{s}") for s in range(3)] == [(0.5, 9), (1.5, 9), (2.5, 9)]
    assert sweep._recorded_loss(earlier, "missing")[1] == -1
    assert sweep.earlier_runs(tmp_path / "nowhere") == {}
