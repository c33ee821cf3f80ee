"""FSDP2, TP+SP and HSDP on gloo give the losses of one process at the same global batch."""

import os

import pytest
import torch

from helpers import launch, tiny_config


@pytest.fixture(scope="module")
def single_losses(demo_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    # global batch 8 = 4 slots of 2 rows; one process runs them as 4 micro-batches
    cfg = tiny_config(tmp, demo_dir, training={"local_batch_size": 2})
    return launch(1, cfg, tmp)


# determinism (bit-identical repeated runs) and FSDP 2 / TP 2 alone against one process:
# tests/test_golden.py


def test_hsdp_2x2_equals_one(single_losses, demo_dir, tmp_path):
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2},
                      parallelism={"dp_replicate": 2, "dp_shard": 2})
    losses = launch(4, cfg, tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)
    assert losses[-1] < losses[0]


def test_fsdp_x_tp_2x2_equals_one(single_losses, demo_dir, tmp_path):
    """2D parallelism (torchtitan's usual 8B layout): FSDP2 over dp_shard=2, TP+SP over tp=2."""
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2},
                      parallelism={"dp_shard": 2, "tp": 2})
    losses = launch(4, cfg, tmp_path)
    assert losses == pytest.approx(single_losses, rel=1e-4)


@pytest.mark.parametrize("parallelism", [{"dp_shard": 2}, {"tp": 2}], ids=["fsdp", "tp"])
def test_tied_embeddings_stay_tied(demo_dir, tmp_path, parallelism):
    """Llama-3.2-style tied embeddings: 2 ranks equal 1 rank, and the weights stay shared."""
    cfg = tiny_config(tmp_path, demo_dir, training={"local_batch_size": 2, "steps": 3},
                      model={"flavor": "small", "vocab_size": 2304})
    single = launch(1, cfg, tmp_path)
    losses = launch(2, dict(cfg, parallelism=parallelism), tmp_path)
    assert losses == pytest.approx(single, rel=1e-4)


def _embedding_grad_worker(cfg: dict) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from titan_jepa.models.llama import ModelArgs, Transformer
    from titan_jepa.parallel.parallelize import apply_tp

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256,
                     multiple_of=16, ffn_dim_multiplier=None)
    model = Transformer(args)
    model.init_weights(seed=0)
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    if "RANK" in os.environ:  # launched on 2 ranks; called directly it is the 1-process reference
        dist.init_process_group("gloo")
        apply_tp(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
    model(tokens).logits.float().pow(2).mean().backward()
    grad = model.tok_embeddings.weight.grad
    full = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
    return {"local_rows": (grad.to_local() if hasattr(grad, "to_local") else grad).shape[0],
            "placements": str(getattr(grad, "placements", None)), "full": full.tolist()}


def test_tp_embedding_grad_stays_vocab_sharded(tmp_path):
    """Untied embeddings under TP only: the gradient keeps the weight's vocab sharding (half
    the rows per rank), and its values equal one process's gradient."""
    single = _embedding_grad_worker({})
    tp = launch(2, {}, tmp_path, fn=_embedding_grad_worker)
    assert tp["local_rows"] == 128 and tp["placements"] == "(Shard(dim=0),)"
    assert torch.tensor(tp["full"]) == pytest.approx(torch.tensor(single["full"]), abs=1e-6)


def _loss_parallel_worker(cfg: dict) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from titan_jepa.models.llama import ModelArgs, Transformer
    from titan_jepa.objectives.next_token import next_token_loss_sum
    from titan_jepa.parallel.loss_parallel import loss_context
    from titan_jepa.parallel.parallelize import apply_tp

    args = ModelArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=256,
                     multiple_of=16, ffn_dim_multiplier=None)
    model = Transformer(args)
    model.init_weights(seed=0)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (2, 16), generator=gen)
    labels = torch.randint(0, 256, (2, 16), generator=gen)
    labels[0, :5] = -100  # ignored targets
    if "RANK" in os.environ:  # launched on 2 ranks; called directly it is the 1-process reference
        dist.init_process_group("gloo")
        apply_tp(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
    seen = {}
    model.output.register_forward_hook(lambda m, i, out: seen.update(
        placements=str(getattr(out, "placements", None)),
        local_shape=list((out.to_local() if hasattr(out, "to_local") else out).shape)))
    with loss_context(model):
        logits, hidden = model(tokens)
        loss = next_token_loss_sum(logits, labels)
        loss.backward()
    grad = model.output.weight.grad
    return {**seen, "loss": loss.item(), "loss_type": type(loss).__name__,
            "hidden_type": type(hidden).__name__, "hidden_shape": list(hidden.shape),
            "output_grad": (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).tolist()}


def test_tp_logits_stay_vocab_sharded_under_loss_parallel(tmp_path):
    """Loss parallel: under TP=2 the output's logits are a Shard(-1) DTensor with half the
    vocabulary per rank, the hidden states stay whole plain tensors, and the cross entropy
    on the shards (and its gradient) equals one process's."""
    single = _loss_parallel_worker({})
    tp = launch(2, {}, tmp_path, fn=_loss_parallel_worker)
    assert single["placements"] == "None" and single["local_shape"] == [2, 16, 256]
    assert tp["placements"] == "(Shard(dim=2),)" and tp["local_shape"] == [2, 16, 128]
    assert tp["hidden_type"] == "Tensor" and tp["hidden_shape"] == [2, 16, 64]
    assert tp["loss_type"] == "Tensor"  # a plain tensor for the rest of the step
    assert tp["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert torch.tensor(tp["output_grad"]) == pytest.approx(torch.tensor(single["output_grad"]), abs=1e-5)


def _rope_dtype_worker(cfg: dict) -> dict:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from titan_jepa.models import llama
    from titan_jepa.models.llama import ModelArgs, Transformer
    from titan_jepa.parallel.parallelize import apply_fsdp

    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256,
                     multiple_of=16, ffn_dim_multiplier=None, max_seq_len=4096)
    model = Transformer(args)
    model.init_weights(seed=0)
    dist.init_process_group("gloo")
    apply_fsdp(model, init_device_mesh("cpu", (2,), mesh_dim_names=("dp_shard",)),
               torch.bfloat16, torch.float32, "default")
    seen, rope = [], llama.apply_rope

    def spy(x, cos, sin):
        seen.append((str(x.dtype), str(cos.dtype), str(sin.dtype)))
        out = rope(x, cos, sin)
        # the rotation against float64 at positions up to 4095
        ang = (torch.arange(4096, dtype=torch.float64)[-x.shape[1]:, None]
               * llama.rope_frequencies(args).double()[None, :])
        x0, x1 = x.double().unflatten(-1, (-1, 2)).unbind(-1)
        c, s = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        ref = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
        # share of outputs that are not the float64 rotation rounded to bf16
        seen.append(float((out.detach() != ref.to(out.dtype)).double().mean()))
        return out

    llama.apply_rope = spy
    try:
        positions = torch.arange(4096 - 16, 4096)[None].expand(2, -1)
        model(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0)), positions=positions)
    finally:
        llama.apply_rope = rope
    return {"dtypes": [s for s in seen if isinstance(s, tuple)], "errors": [e for e in seen if isinstance(e, float)]}


def test_fsdp_bf16_keeps_rope_tables_float32(tmp_path):
    """FSDP2 with bf16 params casts the blocks' activations, not the RoPE cos/sin tables the
    model hands each block: at positions near 4k the rotated q and k are the float64 rotation
    rounded to bf16 (bf16 tables, 8 significant bits, move many of them off it)."""
    out = launch(2, {}, tmp_path, fn=_rope_dtype_worker)
    assert out["dtypes"] == [["torch.bfloat16", "torch.float32", "torch.float32"]] * 4  # q, k x 2 blocks
    assert max(out["errors"]) < 0.01, out["errors"]
