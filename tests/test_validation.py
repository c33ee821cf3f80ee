"""[validation]: held-out loss and generation eval in the training loop; checkpoint.keep_best."""

import json

import pytest

from helpers import launch, tiny_config
from titan_jepa.checkpoint import complete_checkpoints
from titan_jepa.config import ConfigError, load_config
from titan_jepa.data.sources import DataError


def val_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "t" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "val/loss" in r or "val/accuracy" in r}


def chat_jepa_config(run_dir, demo_dir, **sections):
    base = dict(data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                jepa={"enable": True, "k": 1},
                training={"steps": 2},
                validation={"enable": True, "path": str(demo_dir / "regex_train.jsonl"), "freq": 2, "steps": 2,
                            "eval_scorer": "startswith", "eval_path": str(demo_dir / "regex_test.jsonl"),
                            "eval_samples": 3, "eval_max_new_tokens": 4})
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return tiny_config(run_dir, demo_dir, **base)


def test_validation_of_one_process_equals_fsdp_and_tp_two_ranks(demo_dir, tmp_path):
    one, two, tp = tmp_path / "one", tmp_path / "two", tmp_path / "tp"
    launch(1, chat_jepa_config(one, demo_dir), tmp_path)
    launch(2, chat_jepa_config(two, demo_dir), tmp_path)
    # (the generation eval needs tp = 1)
    launch(2, chat_jepa_config(tp, demo_dir, parallelism={"tp": 2}, validation={"eval_scorer": ""}), tmp_path)
    a, b, c = val_rows(one)[2], val_rows(two)[2], val_rows(tp)[2]
    assert {"val/loss", "val/ntp_loss", "val/jepa_loss", "val/jepa_cos", "val/accuracy"} <= set(a)
    assert a["val/batches"] == b["val/batches"] == c["val/batches"] == 2
    for k in ("val/loss", "val/ntp_loss", "val/jepa_loss", "val/jepa_cos"):
        assert b[k] == pytest.approx(a[k], rel=1e-5), k
        assert c[k] == pytest.approx(a[k], rel=1e-5), k
    # 3 samples over 2 ranks (shares padded to 2 each): every sample scored exactly once
    assert a["val/eval_samples"] == b["val/eval_samples"] == 3
    assert a["val/accuracy"] == b["val/accuracy"]


def test_validation_after_resume_equals_uninterrupted(demo_dir, tmp_path):
    def cfg(run_dir, steps):
        return tiny_config(run_dir, demo_dir, training={"steps": steps},
                           validation={"enable": True, "path": str(demo_dir / "corpus.jsonl"), "freq": 2,
                                       "steps": 2},
                           checkpoint={"enable": True, "interval": 2})

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    launch(1, cfg(whole, 4), tmp_path)
    launch(1, cfg(resumed, 2), tmp_path)
    launch(1, cfg(resumed, 4), tmp_path)  # resumes from step 2
    a, b = val_rows(whole), val_rows(resumed)
    assert sorted(a) == sorted(b) == [2, 4]
    assert a[4]["val/loss"] == b[4]["val/loss"] and a[2]["val/loss"] == b[2]["val/loss"]
    assert a[4]["val/loss"] < a[2]["val/loss"]


def test_accuracy_rises_and_the_best_checkpoint_is_kept(demo_dir, tmp_path):
    # memorise 8 short demo answers: exact-match accuracy on them rises within 40 steps
    rows = [json.loads(x) for x in (demo_dir / "regex_train.jsonl").read_text().splitlines()]
    short = [r for r in rows if len(r["messages"][-1]["content"]) <= 5][:8]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in short))
    run_dir = tmp_path / "acc"
    cfg = tiny_config(run_dir, demo_dir, data={"kind": "chat", "path": str(data)},
                      training={"steps": 40, "global_batch_size": 4, "local_batch_size": 4},
                      validation={"enable": True, "path": str(data), "freq": 10, "steps": 1,
                                  "eval_scorer": "exact", "eval_samples": 8, "eval_max_new_tokens": 8},
                      checkpoint={"enable": True, "interval": 1000, "keep_latest_k": 1,
                                  "keep_best": "val/accuracy"})
    launch(1, cfg, tmp_path)
    val = val_rows(run_dir)
    acc = [val[s]["val/accuracy"] for s in (10, 20, 30, 40)]
    assert acc[-1] > acc[0] and acc[-1] >= 0.5, acc
    best_step = (10, 20, 30, 40)[acc.index(max(acc))]  # the first step that reached the best value
    folder = run_dir / "t" / "checkpoint"
    best = json.loads((folder / "best.json").read_text())
    assert best == {"metric": "val/accuracy", "mode": "max", "value": max(acc), "step": best_step}
    # keep_latest_k = 1 keeps the last step; the best step stays beside it
    assert sorted(complete_checkpoints(folder)) == sorted({best_step, 40})
    state = json.loads((folder / f"step-{best_step}" / "train_state.json").read_text())
    assert state["best"]["step"] == best_step


def test_validation_errors_are_one_line(demo_dir, tmp_path):
    with pytest.raises(ConfigError, match="validation.enable needs validation.path"):
        load_config(extra={"validation": {"enable": True}})
    from titan_jepa.objectives import build_objectives
    from titan_jepa.validation import check_keep_best

    no_eval = load_config(extra={"validation": {"enable": True, "path": "x"},
                                 "checkpoint": {"enable": True, "keep_best": "val/accuracy"}})
    with pytest.raises(ConfigError, match="is not logged by this run's validation; choose one of val/batches, val/loss"):
        check_keep_best(no_eval, build_objectives(no_eval))  # train() checks it before any heavy work
    jepa = load_config(extra={"data": {"kind": "chat"}, "jepa": {"enable": True},
                              "validation": {"enable": True, "path": "x"},
                              "checkpoint": {"enable": True, "keep_best": "val/jepa_cos"}})
    check_keep_best(jepa, build_objectives(jepa))  # the objectives' own metric names are logged
    with pytest.raises(ConfigError, match="needs parallelism.tp = 1"):
        load_config(extra={"validation": {"enable": True, "path": "x", "eval_scorer": "exact"},
                           "parallelism": {"tp": 2}})
    with pytest.raises(ConfigError, match="keep_best needs checkpoint.enable"):
        load_config(extra={"checkpoint": {"keep_best": "val/loss"}})
    # a validation set too small for the batch slots is found before training starts
    tiny = tmp_path / "one.jsonl"
    tiny.write_text((demo_dir / "regex_test.jsonl").read_text().splitlines()[0] + "\n")
    cfg = tiny_config(tmp_path / "r", demo_dir, data={"kind": "chat", "path": str(demo_dir / "regex_train.jsonl")},
                      validation={"enable": True, "path": str(tiny)})
    with pytest.raises(DataError, match="validation.path: no records for batch slot [01] of 2"):
        launch(1, cfg, tmp_path)


def test_keep_best_survives_keep_latest_and_resume(tmp_path):
    import torch

    from titan_jepa.checkpoint import Checkpointer

    cfg = load_config(extra={"job": {"dump_folder": str(tmp_path)},
                             "validation": {"enable": True, "path": "unused"},
                             "checkpoint": {"enable": True, "interval": 1000, "keep_latest_k": 1,
                                            "keep_best": "val/loss"}})

    def checkpointer():
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.AdamW(model.parameters())
        return Checkpointer(cfg, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), [])

    ck = checkpointer()
    for step, loss in ((1, 3.0), (2, None), (3, 1.0), (4, None), (5, 2.0)):
        if loss is not None:
            ck.note_validation(step, {"val/loss": loss})  # a new best saves its step
        ck.save(step)  # a no-op where note_validation saved
    folder = tmp_path / "run" / "checkpoint"
    assert sorted(complete_checkpoints(folder)) == [3, 5]  # the latest, and the best beside it
    assert json.loads((folder / "best.json").read_text())["step"] == 3
    resumed = checkpointer()
    assert resumed.load() == 5 and resumed.best == {"metric": "val/loss", "mode": "min", "value": 1.0, "step": 3}
    resumed.note_validation(6, {"val/loss": 0.5})  # better: step 6 saved, step 3 pruned
    assert sorted(complete_checkpoints(folder)) == [6]


def test_validation_under_pipeline_parallelism_and_hsdp_equals_one_process(demo_dir, tmp_path):
    """PP=2 (1F1B: the schedule runs the validation micro-batches forward only, the objective
    on the last stage) and HSDP 2x2: the val/ metrics equal one process's."""
    one, pp, one4, hsdp = tmp_path / "one", tmp_path / "pp", tmp_path / "one4", tmp_path / "hsdp"
    no_gen = {"eval_scorer": ""}
    four_slots = {"local_batch_size": 2}  # HSDP 2 x 2 needs 4 batch slots of the global 8 rows
    launch(1, chat_jepa_config(one, demo_dir, validation=no_gen), tmp_path)
    launch(2, chat_jepa_config(pp, demo_dir, validation=no_gen, parallelism={"pp": 2}), tmp_path)
    launch(1, chat_jepa_config(one4, demo_dir, validation=no_gen, training=four_slots), tmp_path)
    launch(4, chat_jepa_config(hsdp, demo_dir, validation=no_gen, training=four_slots,
                               parallelism={"dp_replicate": 2, "dp_shard": 2}), tmp_path)
    for ref, other in ((one, pp), (one4, hsdp)):
        a, b = val_rows(ref)[2], val_rows(other)[2]
        assert a["val/batches"] == b["val/batches"] == 2
        for k in ("val/loss", "val/ntp_loss", "val/jepa_loss", "val/jepa_cos"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), (other.name, k)
