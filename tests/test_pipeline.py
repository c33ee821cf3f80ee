"""Pipeline parallelism (titan_jepa/parallel/pipeline.py) on gloo equals one process at the
same global batch: next-token, LLM-JEPA (separate and shared_prefix), STP with its linear
predictor, interleaved virtual stages, PP x FSDP2 and PP x TP, LoRA (adapters-only checkpoints
resumed on another layout); gradient norm and clipping; the initial weights; DCP checkpoints
across layouts; the one-line config errors."""

import json

import pytest
import torch

from helpers import launch, tiny_config, train_each
from titan_jepa.config import ConfigError, load_config
from titan_jepa.models.llama import Transformer, build_model, model_args_for
from titan_jepa.parallel.mesh import ParallelDims
from titan_jepa.parallel.pipeline import stage_layers, stages_of_rank

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _cfg(tmp_path, demo_dir, **sections):
    # global batch 8 = 4 micro-batches of 2 rows (>= pp and a multiple of it); max_norm 0.5
    # is below the debug model's gradient norms (~1), so clipping is active at every step
    sections["training"] = {"local_batch_size": 2, "max_norm": 0.5, **sections.get("training", {})}
    return tiny_config(tmp_path, demo_dir, **sections)


def _grad_norms(tmp_path) -> list[float]:
    lines = (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["grad_norm"] for line in lines]


@pytest.fixture(scope="module")
def single(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    return launch(1, _cfg(tmp, demo_dir), tmp), _grad_norms(tmp)


def test_pp2_1f1b_equals_one_with_grad_norm_and_clipping(single, demo_dir, tmp_path):
    losses = launch(2, _cfg(tmp_path, demo_dir, parallelism={"pp": 2}), tmp_path)
    assert losses == pytest.approx(single[0], rel=1e-4)
    assert _grad_norms(tmp_path) == pytest.approx(single[1], rel=1e-4)
    assert min(single[1]) > 0.5  # clipped at every step


LAYOUTS = {  # id: (world, [parallelism])
    "interleaved-v2": (2, {"pp": 2, "pp_schedule": "Interleaved1F1B", "pp_stages_per_rank": 2}),  # 4 stages of 1 layer
    "zbv": (2, {"pp": 2, "pp_schedule": "ZBVZeroBubble", "pp_stages_per_rank": 2}),  # zero bubble, a V of stages
    "interleaved-zb": (2, {"pp": 2, "pp_schedule": "InterleavedZeroBubble", "pp_stages_per_rank": 2}),  # looped
    "gpipe-uneven": (2, {"pp": 2, "pp_schedule": "GPipe", "pp_layers_per_stage": [1, 3]}),  # an uneven split
    "pp2-fsdp2": (4, {"pp": 2, "dp_shard": 2}),
    "pp2-tp2": (4, {"pp": 2, "tp": 2}),
}


@pytest.mark.parametrize("world", [2, 4])
def test_layouts_equal_one(single, demo_dir, tmp_path, world):
    """Every layout of a world size in one launch (process start-up is most of a layout's
    time on 2 cores); a failure names its layout."""
    names = [n for n, (w, _) in LAYOUTS.items() if w == world]
    runs = [_cfg(tmp_path / n, demo_dir, parallelism=LAYOUTS[n][1]) for n in names]
    for name, losses in zip(names, launch(world, {"runs": runs}, tmp_path, fn=train_each)):
        assert losses == pytest.approx(single[0], rel=1e-4), name
        assert _grad_norms(tmp_path / name) == pytest.approx(single[1], rel=1e-4), name


CHAT = {"kind": "chat", "loss_on": "all"}
STP = {"enable": True, "mode": "random_span", "lambda": 0.5, "linear_predictor": True}


@pytest.mark.parametrize("views", ["separate", "shared_prefix"])
def test_objectives_on_the_last_stage_equal_one(demo_dir, tmp_path, views):
    """LLM-JEPA (both views) and, with separate views, STP with its linear predictor (on the
    last stage) in the same run."""
    jepa = {"enable": True, "views": views, "distance": "cosine", "jepa_ratio": 0.7}
    cfg = _cfg(tmp_path, demo_dir, data={**CHAT, "path": str(demo_dir / "regex_train.jsonl")},
               training={"seq_len": 256, "steps": 3},  # room for both views of a chat sample
               jepa=jepa, **({"stp": STP} if views == "separate" else {}))
    one = launch(1, cfg, tmp_path)
    pp = launch(2, dict(cfg, parallelism={"pp": 2}, job=dict(cfg["job"], dump_folder=str(tmp_path / "pp"))),
                tmp_path)
    assert pp == pytest.approx(one, rel=1e-4)
    logged = json.loads((tmp_path / "pp" / "t" / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["jepa_loss"] > 0 and (views != "separate" or logged["stp_loss"] > 0)


def test_pruned_stages_initialise_as_one_process():
    """Each rank's stages (pruned Transformers, joined) draw exactly the 1-process weights
    under the same names."""
    args = model_args_for("debug")
    full = build_model(args, "cpu")
    full.init_weights(seed=3)
    whole = full.state_dict()
    seen = set()
    for pp_rank in range(2):
        mine = stages_of_rank(pp_rank, 2, 2, "Interleaved1F1B")  # stages {0, 2} and {1, 3}
        layers = stage_layers(args.n_layers, 4)
        parts = [build_model(args, "meta").prune(set(layers[s]), embedding=s == 0, head=s == 3) for s in mine]
        part = Transformer.from_parts(parts)
        part.to_empty(device="cpu")
        part.init_weights(seed=3)
        for k, v in part.state_dict().items():
            assert torch.equal(v, whole[k]), k
            seen.add(k)
    assert seen == set(whole)  # every weight on exactly the stages that own it
    assert stages_of_rank(0, 2, 2, "ZBVZeroBubble") == [0, 3]


def test_checkpoints_across_layouts(demo_dir, tmp_path):
    """A PP=2 save resumes exactly at PP=2, at one process and at FSDP 2; an FSDP 2 save
    resumes at PP=2 (the 5-step losses after the resumed step equal the uninterrupted run's).
    The 2-rank runs go in two launches: the full runs, then the resumed ones."""
    pp, fsdp = {"pp": 2}, {"dp_shard": 2}

    def cfg(name, parallelism, load_step=-1, source=None):
        c = _cfg(tmp_path, demo_dir, checkpoint={"enable": True, "interval": 3, "load_step": load_step},
                 parallelism=parallelism)
        c["job"]["name"] = name
        if source:  # resume from the source run's step 3
            (tmp_path / name / "checkpoint").mkdir(parents=True)
            (tmp_path / name / "checkpoint" / "step-3").symlink_to(tmp_path / source / "checkpoint" / "step-3")
        return c

    full, fsdp_full = launch(2, {"runs": [cfg("pp", pp), cfg("fsdp", fsdp)]}, tmp_path, fn=train_each)  # save 3, 5
    resumed = {"one": launch(1, cfg("from-pp-to-one", {}, 3, "pp"), tmp_path)}
    runs = [cfg("from-pp-to-fsdp2", fsdp, 3, "pp"), cfg("from-pp-to-pp2", pp, 3, "pp"), cfg("from-fsdp", pp, 3, "fsdp")]
    resumed.update(zip(("fsdp2", "pp2", "from-fsdp"), launch(2, {"runs": runs}, tmp_path, fn=train_each)))
    for name in ("one", "fsdp2", "pp2"):
        assert resumed[name] == pytest.approx(full[3:], rel=1e-4), name
    assert resumed["pp2"] == full[3:]  # the same layout resumes bit-identically
    assert resumed["from-fsdp"] == pytest.approx(fsdp_full[3:], rel=1e-4)


@pytest.mark.parametrize("parallelism,world,match", [
    ({"pp": 2}, 3, "world size 3 is not divisible"),
    ({"pp": 2, "dp_shard": 2}, 2, "= 4 but the world size is 2"),
    ({"pp": 3}, 3, "4 layers do not split evenly"),
    ({"pp": 2, "pp_layers_per_stage": [3, 2]}, 2, "summing to the model's 4 layers"),
    ({"pp": 2, "pp_microbatches": 8}, 2, "pp_microbatches=8 but a step has"),
    ({"pp": 4, "pp_layers_per_stage": [1, 1, 1, 1]}, 4, "needs at least pp = 4 micro-batches"),
    ({"pp": 2, "pp_schedule": "Interleaved1F1B", "pp_stages_per_rank": 4}, 2, "do not split evenly over"),
    ({"pp": 2, "pp_schedule": "1F1B", "pp_stages_per_rank": 2}, 2, "runs one stage per rank"),
    ({"pp": 2, "pp_schedule": "ZBVZeroBubble"}, 2, "needs pp_stages_per_rank = 2"),
    ({"pp": 2, "pp_schedule": "1f1b"}, 2, "did you mean '1F1B'"),
], ids=lambda x: str(x))
def test_config_errors_are_one_line(demo_dir, tmp_path, parallelism, world, match):
    """Checked before any process group or model exists."""
    cfg_dict = tiny_config(tmp_path, demo_dir, parallelism=parallelism,
                           training={"local_batch_size": 4})  # 2 micro-batches per dp rank
    with pytest.raises(ConfigError, match=match) as e:
        cfg = load_config(extra=cfg_dict)
        dims = ParallelDims.from_config(cfg, world)
        dims.check(cfg, model_args_for("debug"))
    assert "\n" not in str(e.value)


def test_tied_embeddings_refused_under_pp(demo_dir, tmp_path):
    cfg = load_config(extra=tiny_config(tmp_path, demo_dir, parallelism={"pp": 2}, training={"local_batch_size": 2}))
    with pytest.raises(ConfigError, match="ties the embedding"):
        ParallelDims.from_config(cfg, 2).check(cfg, model_args_for("small"))


def _measure_pp(cases):
    """One real pipeline step per config on this rank; every rank's measured state bytes."""
    import torch.distributed as dist

    from titan_jepa.data.batch import Batch
    from titan_jepa.optim import build_optimizer
    from titan_jepa.parallel.mesh import build_mesh, init_distributed
    from titan_jepa.parallel.parallelize import write_sharded
    from titan_jepa.parallel.pipeline import build_pipeline
    from titan_jepa.plan import measured_state_bytes
    from titan_jepa.config.model import model_args_from_config

    results = []
    for cfg_dict in cases["cases"]:
        cfg = load_config(extra=cfg_dict)
        _, world, device = init_distributed(cfg)
        dims = ParallelDims.from_config(cfg, world)
        args = model_args_from_config(cfg, 0)
        grad_accum = dims.check(cfg, args)
        mesh, _ = build_mesh(dims, "cpu")
        model, runner = build_pipeline(lambda: build_model(args, device="meta"), dims, mesh, cfg, device)
        model.to_empty(device=device)
        model.init_weights(seed=0, buffer_device=device, write=write_sharded)
        runner.init_buffers(device)
        optimizer = build_optimizer(model, cfg, "cpu")
        t = cfg.training
        tokens = torch.randint(0, args.vocab_size, (t.local_batch_size, t.seq_len),
                               generator=torch.Generator().manual_seed(0))
        runner.run([Batch(tokens, tokens)] * grad_accum, lambda out, mb: (out.logits.float().square().mean(), None))
        optimizer.step()
        everyone = [None] * world
        dist.all_gather_object(everyone, measured_state_bytes(model, optimizer))
        results.append(everyone)
    return results


def test_plan_bytes_equal_a_real_pp2_run(demo_dir, tmp_path):
    """The planner's per-stage parameter / gradient / optimizer bytes are a real PP=2 run's
    (1F1B: the embedding on rank 0, the output on rank 1; ZBV: rank 0 holds stages 0 and 3)."""
    from titan_jepa.plan import plan

    cases = [tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2}, parallelism=par)
             for par in ({"pp": 2}, {"pp": 2, "pp_schedule": "ZBVZeroBubble", "pp_stages_per_rank": 2})]
    measured = launch(2, {"cases": cases}, tmp_path, fn=_measure_pp)
    for case, got_ranks in zip(cases, measured):
        cfg = load_config(extra=case)
        for rank in range(2):
            want = vars(plan(cfg, 2, rank))
            for key in ("local_param_elems", "param_bytes", "grad_bytes", "optimizer_bytes"):
                assert want[key] == got_ranks[rank][key], (case["parallelism"], rank, key)
    one_f1b, zbv = ([vars(plan(load_config(extra=c), 2, r)) for r in range(2)] for c in cases)
    args = model_args_for("debug")
    emb = args.vocab_size * args.dim
    # 1F1B: rank 0 holds the embedding and layers 0-1, rank 1 layers 2-3, the norm and the output
    assert one_f1b[0]["layers"] == [0, 1] and one_f1b[1]["layers"] == [2, 3]
    assert one_f1b[1]["local_param_elems"] - one_f1b[0]["local_param_elems"] == args.dim  # the final norm
    assert one_f1b[0]["local_param_elems"] + one_f1b[1]["local_param_elems"] == args.num_params()
    # ZBV: rank 0 holds the first and the last stage, so the embedding and the output
    assert zbv[0]["stages"] == [0, 3] and zbv[0]["local_param_elems"] - zbv[1]["local_param_elems"] == 2 * emb + args.dim
    # in flight: 1F1B's first stage keeps pp = 2 micro-batches, the last one
    assert [p["in_flight_microbatches"] for p in one_f1b] == [2, 1]


def test_lora_under_pp_equals_one_and_resumes_across_layouts(demo_dir, tmp_path):
    """[lora] under pp 2 (the adapters on both stages, the base loaded per stage from a
    Hugging Face folder): the losses equal one process's; its adapters-only checkpoint
    resumes on one process with the uninterrupted run's losses."""
    from titan_jepa.checkpoint.hf import save_hf_checkpoint

    args = model_args_for("debug")
    base = build_model(args, device="cpu")
    base.init_weights(seed=7)
    save_hf_checkpoint(base.state_dict(), args, tmp_path / "hf")
    lora = {"enable": True, "rank": 4, "alpha": 8.0, "target_modules": ["wq", "wv", "w2"]}

    def cfg(name, parallelism, load_step=-1, link_from=None, lr=3e-3):
        c = _cfg(tmp_path, demo_dir, lora=lora, parallelism=parallelism, optimizer={"lr": lr},
                 checkpoint={"enable": True, "interval": 3, "load_step": load_step,
                             "initial_load_path": str(tmp_path / "hf"), "initial_load_format": "hf"})
        c["job"]["name"] = name
        if link_from:
            (tmp_path / name / "checkpoint").mkdir(parents=True)
            (tmp_path / name / "checkpoint" / "step-3").symlink_to(tmp_path / link_from / "checkpoint" / "step-3")
        return c

    one = launch(1, cfg("one", {}), tmp_path)
    frozen = launch(1, cfg("frozen", {}, lr=1e-12), tmp_path)  # the adapters do not move: the base alone
    pp = launch(2, cfg("pp", {"pp": 2}), tmp_path)
    assert len(one) == 5 and one[0] == frozen[0] and all(abs(a - b) > 1e-4 for a, b in zip(one[1:], frozen[1:]))
    assert pp == pytest.approx(one, rel=1e-4)
    state = json.loads((tmp_path / "pp" / "checkpoint" / "step-3" / "train_state.json").read_text())
    assert state["model_keys"] == "trainable"  # the adapters alone; the base comes from initial_load_path
    assert launch(1, cfg("pp-to-one", {}, 3, "pp"), tmp_path) == pytest.approx(one[3:], rel=1e-4)
