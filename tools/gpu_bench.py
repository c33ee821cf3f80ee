"""The GPU evidence kit: one command that measures what the CPU CI cannot, and brings it back.

    python tools/gpu_bench.py [--bench] [--out DIR]          # on one CUDA GPU, <= 8 minutes
    python tools/gpu_bench.py --smoke --out DIR              # the same sections, tiny, on CPU
    python tools/gpu_bench.py --repro --data-dir .gpu_carry  # mini reproduction on synth
    python tools/gpu_bench.py --repro --smoke --data-dir D   # the same, tiny, on CPU

--bench writes DIR/gpu_bench.json (rewritten after every configuration, so a run stopped
at its time limit still returns what it measured) and DIR/gpu_bench.md (Markdown tables).
DIR defaults to $OUT, else outputs/gpu_bench. Sections, each with its own time budget:

  env  versions (torch, CUDA, triton, transformers, torchao), the GPU, and the measured
       bf16 matmul peak (an 8192^3 product; the smoke run times a small fp32 one)
  a    FlexAttention (the block-sparse LLM-JEPA BlockMask, compiled kernel) against SDPA with
       the dense mask, on the same LLM-JEPA batch from the data loader, fp32 and bf16:
       loss difference and max relative gradient difference over the parameters. CPU: the
       forward only (FlexAttention has no CPU backward); the record says so.
  b    tokens/s/GPU and MFU of the 1B and 3B flavors (seq 8192, 4096 when 8192 does not
       fit), bf16 compute, per-block torch.compile, selective activation checkpointing, FSDP2
       on a one-rank process group; Hugging Face LlamaForCausalLM of the same shape (bf16,
       sdpa, forward+backward+AdamW) timed interleaved with it in the same run: ours / HF.
  c    LLM-JEPA overhead: step time of next-token vs JEPA separate, shared_prefix and
       jepa_ratio 0.25 on the same generated synth-shaped chat samples (the logic of
       tools/bench_jepa.py, from tools/bench_common.py), as ratios to next-token, with the
       flex backend and with sdpa + dense mask.
  d    float8 (torchao tensorwise) against bf16 at 3B; skipped with the reason when torchao
       is not importable or the GPU is older than sm89.
  e    peak memory (torch.cuda.max_memory_allocated, reset before every configuration) of
       every configuration above, gathered in one table.
  f    the SmolLM2-135M shape (--smollm2-dir: its config and tokenizer files, random init),
       8 and 64 synth samples, with ours on flex and on sdpa: ours packed vs transformers
       padded to the longest (next-token), ours LLM-JEPA separate views vs the reference's
       3-group and 2-group (4D mask) layouts with transformers' model (tools/bench_smollm2.py
       on the GPU, in bf16; the smoke: 2 samples, sdpa, the shape cut to 2 layers).

  g    context parallelism's all-gather attention at cp = 1 (a one-rank group) against the
       model's own attention on packed documents (32/8 heads of 128, the 8B's attention shape),
       8k and 32k tokens, bf16: the FlexAttention form (BlockMask over local queries x gathered
       keys) against the flex backend, and the sdpa form (dense mask on global indices)
       against it: output and dq/dk/dv max relative differences, fwd+bwd time of each. CPU
       smoke: 256 tokens, eager FlexAttention, the forward only.

An error in one configuration or section is recorded with its traceback's tail and the
rest still run. Each section stops starting configurations when its budget runs out
(recorded as skipped, with the reason) and is interrupted by a watchdog (SIGALRM) when it
overruns it; a second watchdog thread writes the report and exits when the whole run
overruns --hard-limit-s.

--repro trains a ~190M-parameter Llama (the custom flavor ``repro_190M``) from scratch on
synth_train.jsonl for 4 epochs, next-token vs LLM-JEPA (lambda 2, k 3) and (lambda 1, k 1),
seed by seed (82, 23, then 37, 84, 4 while the budget lasts), through titan_jepa.train.train
and titan_jepa.eval (greedy decoding, exact match and startswith on synth_test.jsonl); it
writes DIR/gpu_repro.json and DIR/gpu_repro.md after every run and stops starting runs when
--budget-s would be overrun. docs/gpu.md has the exact device call and explains every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

T_START = time.monotonic()  # run as a script, --hard-limit-s counts from here, before torch's import

import torch  # noqa: E402
import torch._dynamo  # noqa: E402  (not inside run_bench: that would make `torch` local there)
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# tools/ is sys.path[0] under python tools/gpu_bench.py; titan_jepa is installed, or on
# PYTHONPATH (the device machine: PYTHONPATH=$PWD)
from bench_common import median_step_times, objective_loss, packed_batch, train_step  # noqa: E402

from titan_jepa.config import load_config  # noqa: E402
from titan_jepa.data.loader import build_dataloader  # noqa: E402
from titan_jepa.data.tokenizer import build_tokenizer  # noqa: E402
from titan_jepa.metrics import gpu_peak_flops  # noqa: E402
from titan_jepa.models.llama import FLAVORS, ModelArgs, build_model, model_args_for  # noqa: E402
from titan_jepa.optim import build_optimizer  # noqa: E402
from titan_jepa.parallel.parallelize import apply_ac, apply_compile, apply_fsdp, write_sharded  # noqa: E402

SCHEMA = 1
TOKENIZER = ROOT / "assets" / "tokenizer" / "tokenizer.model"
SECTIONS = ("env", "a_flex_vs_sdpa", "b_throughput", "c_jepa_overhead", "d_float8", "f_smollm2", "g_cp_attention")
# the GPU run's section budgets in seconds, compilation included: 500 s in all, 445 s when
# float8 cannot run (d: 5 s), under the hard limit of 465 s from the process start (< 8 minutes).
# Time a section leaves unused goes to the next ones (see section_budget).
BUDGETS = {"env": 15, "a_flex_vs_sdpa": 60, "b_throughput": 165, "c_jepa_overhead": 80, "d_float8": 60,
           "f_smollm2": 60, "g_cp_attention": 60}
SMOKE_BUDGETS = {name: 100 for name in SECTIONS}
REPORT_MARGIN_S = 20  # kept free under the hard limit for the last report and the teardown
FLEX_NO_CPU_BACKWARD = "skipped on CPU: FlexAttention has no CPU backward (forward compared only)"
# --repro's model: ~190M parameters with the demo tokenizer's 2,304 tokens (dim 1024, 16 layers)
REPRO_FLAVOR = "repro_190M"
FLAVORS.setdefault(REPRO_FLAVOR, ModelArgs(dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, vocab_size=2304,
                                           multiple_of=256, ffn_dim_multiplier=None, max_seq_len=2048))


# ---- the one place that touches titan_jepa's Batch / Objective API -----------------------
def objective_loss_fn(cfg):
    """(model, batch) -> the loss to backpropagate, for ``cfg``'s objective (next-token, plus
    [jepa] when enabled). Every use of Batch / Objective internals in this script is here or
    in tools/bench_common.py (objective_loss, packed_batch): adapt them there when that API
    changes. Batches come from build_dataloader or bench_common.packed_batch and are moved
    with ``batch.to(device)``; their ``tokens`` (B, S) give the token counts."""
    from bench_common import objectives_for

    objective = objectives_for(cfg)  # next-token and JEPA: no trainable heads
    return lambda model, batch: objective_loss(model, objective, batch)


# ---- the report: JSON + Markdown, rewritten after every configuration --------------------
def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_safe(x):
    """NaN and infinities as null, so the file is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def tb_tail(e: BaseException, lines: int = 12) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)[-lines:])[-3000:]


class Report:
    """Everything measured, as one dict written to ``<name>.json`` and ``<name>.md``."""

    def __init__(self, out: Path, name: str, mode: str, args: dict, markdown, derive=None):
        self.out, self.name, self.markdown, self.derive = out, name, markdown, derive
        self.data = {"schema": SCHEMA, "mode": mode, "started": now(), "finished": None,
                     "args": args, "env": {}, "sections": {}}
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str, budget_s: float) -> dict:
        sec = {"status": "running", "budget_s": budget_s, "seconds": None, "configs": [], "notes": []}
        self.data["sections"][name] = sec
        return sec

    def write(self) -> None:
        with self.lock:
            if self.derive is not None:
                self.derive(self.data)
            for suffix, text in ((".json", json.dumps(json_safe(self.data), indent=2, default=str) + "\n"),
                                 (".md", self.markdown(self.data))):
                path = self.out / f"{self.name}{suffix}"
                tmp = path.with_suffix(suffix + ".tmp")
                tmp.write_text(text)
                tmp.replace(path)


def table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header) columns; floats get 4 significant digits."""
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "/").replace("\n", " ")
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


BENCH_COLUMNS = {
    "a_flex_vs_sdpa": [("config", "config"), ("loss_sdpa", "loss sdpa"), ("loss_flex", "loss flex"),
                       ("loss_rel_diff", "rel. loss diff"), ("grad_max_rel_diff", "max rel. grad diff"),
                       ("grad_worst_param", "worst parameter"), ("backward", "backward"),
                       ("skipped", "skipped / error")],
    "b_throughput": [("config", "config"), ("model", "model"), ("seq_len", "seq"),
                     ("tokens_per_s", "tokens/s/GPU"), ("mfu_measured_peak", "MFU vs measured peak"),
                     ("mfu_datasheet_peak", "MFU vs datasheet"), ("ratio_ours_hf", "ours / HF"),
                     ("step_s", "step (s)"), ("peak_mem_gib", "peak mem (GiB)"), ("skipped", "skipped / error")],
    "f_smollm2": [("config", "config"), ("samples", "samples"), ("backend", "ours' attention"),
                  ("rows_x_len", "rows x len"), ("step_s", "step (s)"), ("ratio", "ratio"),
                  ("ratio_of", "ratio of"), ("loss", "loss"), ("peak_mem_gib", "peak mem (GiB)"),
                  ("skipped", "skipped / error")],
    "c_jepa_overhead": [("config", "config"), ("backend", "attention"), ("rows_x_len", "rows x len"),
                        ("step_s", "step (s)"), ("ratio_to_ntp", "ratio to next-token"),
                        ("peak_mem_gib", "peak mem (GiB)"), ("skipped", "skipped / error")],
    "g_cp_attention": [("config", "config"), ("cp1_flex_out_rel", "cp1 flex: out rel. diff"),
                       ("cp1_flex_grad_rel", "cp1 flex: max dq/dk/dv rel. diff"),
                       ("cp1_sdpa_out_rel", "cp1 sdpa: out rel. diff"),
                       ("cp1_sdpa_grad_rel", "cp1 sdpa: max dq/dk/dv rel. diff"), ("reference_ms", "flex ms"),
                       ("cp1_flex_ms", "cp1 flex ms"), ("cp1_sdpa_ms", "cp1 sdpa ms"),
                       ("cp1_flex_vs_reference", "cp1 flex / flex"), ("peak_mem_gib", "peak mem (GiB)"),
                       ("skipped", "skipped / error")],
    "e_peak_memory": [("section", "section"), ("config", "config"),
                      ("peak_mem_gib", "peak GiB (max_memory_allocated)"), ("note", "note")],
    "d_float8": [("config", "config"), ("tokens_per_s", "tokens/s/GPU"), ("step_s", "step (s)"),
                 ("speedup_vs_bf16", "float8 / bf16 speed"), ("mfu_datasheet_peak", "MFU vs datasheet (bf16 peak)"),
                 ("peak_mem_gib", "peak mem (GiB)"), ("skipped", "skipped / error")],
}


def peak_memory_rows(data: dict) -> list[dict]:
    """Section e: the peak memory of every configuration of the other sections."""
    rows = []
    for name, sec in data["sections"].items():
        if name == "e_peak_memory":
            continue
        for c in sec.get("configs", []):
            if "peak_mem_gib" in c:
                rows.append({"section": name, "config": c.get("config"), "peak_mem_gib": c["peak_mem_gib"],
                             "note": c.get("skipped") or ("" if c["peak_mem_gib"] is not None
                                                          else "no CUDA allocator here")})
    return rows


def bench_markdown(data: dict) -> str:
    env = data["env"]
    out = [f"# gpu_bench ({data['mode']}) {data['started']}\n",
           f"{env.get('gpu', env.get('device', '?'))}; torch {env.get('torch')}, CUDA {env.get('cuda')}, "
           f"triton {env.get('triton')}, transformers {env.get('transformers')}, torchao {env.get('torchao')}\n",
           f"matmul peak measured: {env.get('matmul_peak_tflops')} TFLOP/s ({env.get('matmul_peak_what')}); "
           f"datasheet bf16 peak: {env.get('datasheet_peak_tflops')} TFLOP/s\n"]
    for name, sec in data["sections"].items():
        out.append(f"\n## {name}: {sec['status']} ({sec.get('seconds')} s of a {sec['budget_s']} s budget)\n")
        out += [f"- {n}\n" for n in sec.get("notes", [])]
        if sec.get("error"):
            out.append(f"\nerror: {sec['error']}\n")
        if name in BENCH_COLUMNS and sec.get("configs"):
            out.append("\n" + table(sec["configs"], BENCH_COLUMNS[name]))
    return "".join(out)


def add_peak_memory_section(data: dict) -> None:
    """Section e, derived from the others at every write."""
    data["sections"].pop("e_peak_memory", None)
    rows = peak_memory_rows(data)
    data["sections"]["e_peak_memory"] = {
        "status": "ok" if rows else "skipped", "budget_s": 0, "seconds": 0, "configs": rows,
        "notes": ["torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats before each "
                  "configuration; None (empty) where the run had no CUDA allocator (CPU smoke)"]}


# ---- budgets and watchdogs -----------------------------------------------------------------
class SectionTimeout(BaseException):
    """Raised by the SIGALRM watchdog in a section that overran its budget (a BaseException,
    so that no `except Exception` on the way swallows it)."""


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def skip_reason(self, need_s: float) -> str | None:
        left = self.left()
        if left < need_s:
            return (f"skipped: the section's time budget ({self.seconds:.0f} s) has {max(left, 0):.0f} s left, "
                    f"this configuration needs about {need_s:.0f} s")
        return None

    def skipped(self, sec: dict, need_s: float, *records: dict) -> bool:
        """True (and ``records`` appended to the section's configurations, marked skipped
        with the reason) when fewer than ``need_s`` seconds are left."""
        reason = self.skip_reason(need_s)
        if reason:
            sec["configs"] += [{**r, "skipped": reason} for r in records]
        return reason is not None


def _on_alarm(signum, frame):
    raise SectionTimeout()


def run_section(report: Report, name: str, budget_s: float, fn, ctx) -> None:
    """Run one section under its budget: errors and watchdog stops are recorded, never raised."""
    sec = report.section(name, round(budget_s))
    report.write()
    t0 = time.monotonic()
    grace = 15.0  # the cooperative checks come first; the alarm only catches a stuck configuration
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, budget_s + grace)
    try:
        fn(ctx, sec, Budget(budget_s), report)
        sec["status"] = "ok" if not any("error" in c for c in sec["configs"]) else "partial"
    except SectionTimeout:
        sec["status"] = "partial"
        sec["error"] = f"stopped by the watchdog after {budget_s + grace:.0f} s (budget {budget_s:.0f} s + grace)"
    except Exception as e:  # noqa: BLE001  (recorded; the other sections still run)
        sec["status"] = "error"
        sec["error"] = f"{type(e).__name__}: {e}"[:500]
        sec["traceback"] = tb_tail(e)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    if sec["status"] == "ok" and sec["configs"] and all("skipped" in c for c in sec["configs"]):
        sec["status"] = "skipped"
    sec["seconds"] = round(time.monotonic() - t0, 1)
    free_memory(ctx.device)
    report.write()


def start_hard_watchdog(report: Report, seconds: float) -> threading.Timer:
    """Write what was measured and exit when the whole run overruns ``seconds``."""
    def fire():
        for sec in report.data["sections"].values():
            if sec["status"] == "running":
                sec["status"] = "partial"
                sec["error"] = f"the run overran --hard-limit-s {seconds:.0f} s; stopped here"
        report.data["finished"] = now()
        report.write()
        print(f"gpu_bench: hard time limit {seconds:.0f} s reached; report written to {report.out}",
              file=sys.stderr, flush=True)
        os._exit(3)
    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


# ---- devices, memory, models -----------------------------------------------------------------
class Ctx:
    """What every section needs: the device, the mode's sizes, the data and the peaks."""

    def __init__(self, args):
        self.smoke = args.smoke
        # with an index: init_process_group(device_id=...) refuses a bare "cuda"
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if torch.cuda.is_available() and not args.smoke else torch.device("cpu"))
        self.cuda = self.device.type == "cuda"
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.chat_path = self.work / "chat_rows.jsonl"
        write_chat_rows(self.chat_path, 512 if not args.smoke else 48)
        self.measured_peak = None  # FLOP/s, from the env section
        self.datasheet_peak = gpu_peak_flops(torch.cuda.get_device_name(self.device)) if self.cuda else None
        self.mesh, self.own_group = None, False
        self.throughput: dict[str, dict] = {}  # section b's results of ours, by flavor
        self.smollm2_dir = Path(args.smollm2_dir)  # section f: SmolLM2's config and tokenizer files
        self.synth_path = Path(args.data_dir) / "synth_train.jsonl"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        if not self.cuda:
            return None
        return round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def write_chat_rows(path: Path, n: int) -> None:
    """``n`` generated NL-to-regex chat samples shaped like synth (tools/make_demo_data.py)."""
    from demo_data import regex_sample

    rng = random.Random(0)
    path.write_text("".join(json.dumps(regex_sample(rng)) + "\n" for _ in range(n)))


def one_rank_mesh(ctx: Ctx):
    """A one-rank process group (nccl on CUDA, gloo on CPU) and its 1-D mesh, so FSDP2 runs
    on one GPU as it does on many (the training loop applies FSDP only when dp > 1)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    if ctx.mesh is None:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if ctx.cuda else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1, **({"device_id": ctx.device} if ctx.cuda else {}))
            ctx.own_group = True  # only once it exists: run_bench destroys it at the end
        ctx.mesh = init_device_mesh(ctx.device.type, (1,), mesh_dim_names=("dp_shard",))
    return ctx.mesh


def build_ours(ctx: Ctx, margs: ModelArgs, *, compile: bool, ac: str, float8: bool = False):
    """Our model as train.py parallelises it (float8, activation checkpointing, per-block
    compile, then FSDP2 with bf16 params and fp32 reductions), on the one-rank mesh.

    The CPU smoke run keeps fp32 params: it does not compile, and FSDP2's bf16 cast of the
    blocks' inputs turns the RoPE tables bf16, which the eager complex RoPE
    (models/llama.apply_rope: torch.complex) refuses; the compiled real form does not."""
    model = build_model(margs, "meta")
    if float8:
        from titan_jepa.parallel.float8 import convert_to_float8

        convert_to_float8(model, "tensorwise")
    if ac != "none":
        apply_ac(model, ac, 2)
    if compile:
        apply_compile(model)
    param_dtype = torch.bfloat16 if ctx.cuda else torch.float32
    apply_fsdp(model, one_rank_mesh(ctx), param_dtype, torch.float32, "default")
    model.to_empty(device=ctx.device)
    model.init_weights(seed=0, buffer_device=ctx.device, write=write_sharded)
    return model.train()


def build_plain(ctx: Ctx, margs: ModelArgs, dtype: torch.dtype):
    """Our model, unwrapped, with every parameter in ``dtype`` (weights from seed 0)."""
    model = build_model(margs, "meta")
    model.to_empty(device=ctx.device)
    model.init_weights(seed=0, buffer_device=ctx.device)
    model.to(dtype).init_buffers(ctx.device)  # RoPE tables stay fp32, as titan_jepa.eval keeps them
    return model.train()


def build_hf(ctx: Ctx, margs: ModelArgs):
    """transformers' LlamaForCausalLM of the same shape, bf16, sdpa attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from titan_jepa.checkpoint.hf import hf_config_dict

    skip = ("architectures", "model_type", "torch_dtype", "dtype")
    config = LlamaConfig(**{k: v for k, v in hf_config_dict(margs).items() if k not in skip})
    config.use_cache = False
    config._attn_implementation = "sdpa"
    with torch.device(ctx.device):
        hf = LlamaForCausalLM(config)
    return hf.to(torch.bfloat16).train()


def base_config(ctx: Ctx, **sections):
    """A JobConfig for this script's batches and optimizers (chat data: the generated rows)."""
    extra = {"tokenizer": {"path": str(TOKENIZER)},
             "data": {"kind": "chat", "path": str(ctx.chat_path), "loss_on": "all", "num_epochs": -1},
             "job": {"dump_folder": str(ctx.work / "runs")}}
    for name, values in sections.items():
        extra[name] = {**extra.get(name, {}), **values}
    return load_config(extra=extra)


def lm_step(model, opt, tokens, targets, hf: bool):
    """Forward (logits), cross entropy in fp32 outside the model, backward, AdamW step."""
    def step():
        logits = model(input_ids=tokens).logits if hf else model(tokens).logits
        train_step(opt, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten()))
    return step


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def record_error(sec: dict, config: str, e: Exception, **fields) -> None:
    sec["configs"].append({"config": config, **fields, "peak_mem_gib": None,
                           "error": f"{type(e).__name__}: {e}"[:500], "skipped": f"error: {type(e).__name__}",
                           "traceback": tb_tail(e)})


# ---- the sections ------------------------------------------------------------------------------
def section_env(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    env = report.data["env"]
    env.update({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "device": str(ctx.device)})
    for mod in ("triton", "transformers", "torchao", "datasets"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001  (ImportError, or a broken install)
            env[mod] = f"not importable ({type(e).__name__})"
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        env.update({"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                    "sm_count": props.multi_processor_count, "gpu_mem_gib": round(props.total_memory / 2**30, 1)})
    n, dtype = (8192, torch.bfloat16) if ctx.cuda else (256, torch.float32)
    g = torch.Generator(device=ctx.device).manual_seed(0)
    a = torch.randn(n, n, device=ctx.device, dtype=dtype, generator=g)  # random data, never zeros
    b = torch.randn(n, n, device=ctx.device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    ctx.sync()
    reps, t0 = (50 if ctx.cuda else 5), time.perf_counter()
    for _ in range(reps):
        a @ b
    ctx.sync()
    flops = 2 * n**3 * reps / (time.perf_counter() - t0)
    ctx.measured_peak = flops
    env.update({"matmul_peak_tflops": round(flops / 1e12, 1 if ctx.cuda else 4),
                "matmul_peak_what": f"{n}^3 {str(dtype).split('.')[-1]} matmul on {ctx.device.type}",
                "datasheet_peak_tflops": ctx.datasheet_peak / 1e12 if ctx.datasheet_peak else None})
    sec["configs"].append({"config": "matmul", "tflops": env["matmul_peak_tflops"], "peak_mem_gib": ctx.peak_gib()})


@contextlib.contextmanager
def eager_flex_on_cpu(ctx: Ctx):
    """CPU smoke only: the flex backend calls flex_attention uncompiled. Compiling it for CPU
    takes minutes on a loaded 2-core machine; the eager form computes the same function."""
    if ctx.cuda:
        yield
        return
    from torch.nn.attention.flex_attention import flex_attention

    from titan_jepa.models import attention

    compiled_init = attention.FlexAttention.__init__

    def eager_init(self, *args, **kwargs):
        compiled_init(self, *args, **kwargs)
        self._flex = flex_attention

    attention.FlexAttention.__init__ = eager_init
    try:
        yield
    finally:
        attention.FlexAttention.__init__ = compiled_init


def section_flex_vs_sdpa(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    flavor, seq, rows = ("1B", 4096, 2) if ctx.cuda else ("debug", 128, 1)
    cfg = base_config(ctx, training={"seq_len": seq, "local_batch_size": rows, "global_batch_size": rows},
                      jepa={"enable": True, "k": 1, "lambda": 1.0})
    tok = build_tokenizer(cfg.tokenizer)
    batch = next(build_dataloader(cfg, tok)).to(ctx.device)
    loss_fn = objective_loss_fn(cfg)
    sec["notes"].append(f"{flavor} flavor (vocab {tok.vocab_size}), one LLM-JEPA batch of {rows} x {seq} from "
                        f"build_dataloader (separate views, k 1); flex = compiled flex_attention with the "
                        f"BlockMask, sdpa = the dense boolean mask; the same weights (seed 0) in each dtype")
    if not ctx.cuda:
        sec["notes"].append("CPU smoke: flex_attention runs eager (compiling it for CPU takes minutes) and the "
                            "forward only is compared: " + FLEX_NO_CPU_BACKWARD)
    for dtype in (torch.float32, torch.bfloat16):
        name = f"{str(dtype).split('.')[-1]} {'fwd+bwd' if ctx.cuda else 'fwd'}"
        if budget.skipped(sec, 25 if ctx.cuda else 5, {"config": name}):
            continue
        try:
            ctx.reset_peak()
            losses, grads = {}, {}
            for backend in ("sdpa", "flex"):
                margs = model_args_for(flavor, attn_backend=backend, vocab_size=tok.vocab_size)
                model = build_plain(ctx, margs, dtype)
                if ctx.cuda:
                    loss = loss_fn(model, batch)
                    loss.backward()
                    grads[backend] = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
                else:
                    with torch.no_grad(), eager_flex_on_cpu(ctx):
                        loss = loss_fn(model, batch)
                losses[backend] = float(loss)
                del model
            rec = {"config": name, "loss_sdpa": losses["sdpa"], "loss_flex": losses["flex"],
                   "loss_abs_diff": abs(losses["flex"] - losses["sdpa"]),
                   "loss_rel_diff": abs(losses["flex"] - losses["sdpa"]) / max(abs(losses["sdpa"]), 1e-12)}
            if ctx.cuda:
                rel = {n: float((grads["flex"][n] - g).norm() / g.norm().clamp(min=1e-30))
                       for n, g in grads["sdpa"].items()}
                worst = max(rel, key=rel.get)
                rec.update({"grad_max_rel_diff": rel[worst], "grad_worst_param": worst, "backward": "compared"})
            else:
                rec.update({"grad_max_rel_diff": None, "backward": FLEX_NO_CPU_BACKWARD})
            rec["peak_mem_gib"] = ctx.peak_gib()
            sec["configs"].append(rec)
        except Exception as e:  # noqa: BLE001
            record_error(sec, name, e)
        grads = {}
        free_memory(ctx.device)
        report.write()


def section_throughput(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    if ctx.cuda:
        plans, seqs, rounds, compile = [("1B", 70), ("3B", 110)], (8192, 4096), 5, True
    else:
        plans, seqs, rounds, compile = [("debug", 5)], (64,), 1, False
    params = ("bf16 params (FSDP2 MixedPrecisionPolicy, fp32 master weights and AdamW)" if ctx.cuda else
              "fp32 params (CPU smoke, see build_ours)")
    sec["notes"].append(f"ours: {params}, "
                        f"fp32 reductions, per-block compile {compile}, selective activation checkpointing "
                        f"(every 2nd block), FSDP2 on a one-rank mesh; HF: LlamaForCausalLM all bf16 (params "
                        f"and AdamW states), sdpa, no checkpointing; one row per step, cross entropy in fp32 "
                        f"outside the models; median of {rounds} interleaved rounds after a warm-up round")
    sec["notes"].append("MFU = tokens/s x the model's training FLOPs per token (6 x non-embedding params + "
                        "12 x layers x dim x seq, recomputation not counted) / peak; 'measured' = the env "
                        "section's matmul, 'datasheet' = titan_jepa.metrics' table (989 TFLOP/s for H100/H200)")
    cfg = base_config(ctx)
    for flavor, need in plans:
        if budget.skipped(sec, need, *({"config": f"{flavor} {who}", "model": who} for who in ("ours", "hf"))):
            continue
        for seq in seqs:
            ours = hf = None
            try:
                ctx.reset_peak()
                margs = model_args_for(flavor, max_seq_len=max(seq, 2048))
                ours = build_ours(ctx, margs, compile=compile, ac="selective")
                hf = build_hf(ctx, margs)
                counted = {"ours": margs.num_params(), "hf": sum(p.numel() for p in hf.parameters())}
                opts = {"ours": build_optimizer(ours, cfg, ctx.device.type),
                        "hf": torch.optim.AdamW(hf.parameters(), lr=cfg.optimizer.lr, fused=ctx.cuda)}
                g = torch.Generator().manual_seed(0)
                data = torch.randint(0, margs.vocab_size, (1, seq + 1), generator=g).to(ctx.device)
                tokens, targets = data[:, :-1], data[:, 1:]
                steps = {"ours": lm_step(ours, opts["ours"], tokens, targets, False),
                         "hf": lm_step(hf, opts["hf"], tokens, targets, True)}
                times = median_step_times(steps, rounds, sync=ctx.sync)
                peak = ctx.peak_gib()
                fpt = margs.flops_per_token(seq)
                for who in ("ours", "hf"):
                    tps = seq / times[who]
                    rec = {"config": f"{flavor} {who}", "model": who, "flavor": flavor, "seq_len": seq,
                           "step_s": times[who], "tokens_per_s": tps,
                           "mfu_measured_peak": tps * fpt / ctx.measured_peak if ctx.measured_peak else None,
                           "mfu_datasheet_peak": tps * fpt / ctx.datasheet_peak if ctx.datasheet_peak else None,
                           "ratio_ours_hf": times["hf"] / times["ours"] if who == "ours" else None,
                           "params": counted[who],
                           "peak_mem_gib": peak, "peak_mem_note": "ours and HF together (interleaved)"}
                    sec["configs"].append(rec)
                ctx.throughput[flavor] = sec["configs"][-2]
                break
            except Exception as e:  # noqa: BLE001
                oom = is_oom(e)
                if oom and seq != seqs[-1]:
                    sec["notes"].append(f"{flavor} at seq {seq}: out of memory (ours + HF together); retried at {seqs[-1]}")
                else:
                    record_error(sec, f"{flavor} seq {seq}", e, model="both", seq_len=seq)
                    break
            finally:
                del ours, hf
                opts = steps = None
                free_memory(ctx.device)
                report.write()


def section_jepa_overhead(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    # 96 samples: the 1B body's activations for the JEPA rows (~12 x 2048 tokens) stay ~40 GiB
    flavor, seq, samples, rounds = ("1B", 2048, 96, 3) if ctx.cuda else ("debug", 128, 6, 1)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    base = base_config(ctx, jepa={"enable": True, "k": 1, "lambda": 1.0})
    tok = build_tokenizer(base.tokenizer)
    records = [json.loads(line) for line in ctx.chat_path.read_text().splitlines()[:samples]]
    variants = {  # name: (config, with views)
        "next-token": (replace(base, jepa=replace(base.jepa, enable=False)), False),
        "jepa separate": (base, True),
        "jepa shared_prefix": (replace(base, jepa=replace(base.jepa, views="shared_prefix")), True),
        "jepa_ratio 0.25": (replace(base, jepa=replace(base.jepa, jepa_ratio=0.25)), True),
    }
    batches = {n: packed_batch(records, c, tok, seq, v).to(ctx.device) for n, (c, v) in variants.items()}
    sec["notes"].append(f"{flavor} body with the demo tokenizer's {tok.vocab_size}-token vocab, {samples} generated "
                        f"synth-shaped samples per step packed into rows of {seq} (tools/bench_common.packed_batch, "
                        f"as tools/bench_jepa.py), all-{str(dtype).split('.')[-1]} params and AdamW, no FSDP, "
                        f"eager blocks (flex: its compiled kernel; FSDP2's bf16 input cast breaks the eager "
                        f"complex RoPE, see build_ours); "
                        f"median of {rounds} interleaved rounds; peak memory from one untimed step per variant")
    backends = ("sdpa", "flex") if ctx.cuda else ("sdpa",)  # flex compiles per row count: last
    if not ctx.cuda:
        sec["configs"].append({"config": "all variants", "backend": "flex", "skipped": FLEX_NO_CPU_BACKWARD.replace(
            " (forward compared only)", "")})
    for backend in backends:
        if budget.skipped(sec, 35 if ctx.cuda else 5, *({"config": n, "backend": backend} for n in variants)):
            continue
        model = None
        try:
            margs = model_args_for(flavor, attn_backend=backend, vocab_size=tok.vocab_size, max_seq_len=seq)
            model = build_plain(ctx, margs, dtype)
            opt = build_optimizer(model, base, ctx.device.type)
            steps, peaks = {}, {}
            for name, (cfg, _) in variants.items():
                loss_fn = objective_loss_fn(cfg)
                steps[name] = (lambda f=loss_fn, b=batches[name], m=model, o=opt: train_step(o, f(m, b)))
                if ctx.cuda:  # the CPU has no allocator peak to read: no extra step
                    ctx.reset_peak()
                    steps[name]()
                    ctx.sync()
                peaks[name] = ctx.peak_gib()
            times = median_step_times(steps, rounds, sync=ctx.sync)
            for name, t in times.items():
                rows, width = batches[name].tokens.shape
                sec["configs"].append({"config": name, "backend": backend, "rows_x_len": f"{rows} x {width}",
                                       "step_s": t, "ratio_to_ntp": t / times["next-token"],
                                       "peak_mem_gib": peaks[name]})
        except Exception as e:  # noqa: BLE001
            record_error(sec, f"{backend} variants", e, backend=backend)
        finally:
            del model
            steps = opt = None
            free_memory(ctx.device)
            report.write()


def section_float8(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    reason = float8_unavailable(ctx)
    if reason:
        sec["configs"].append({"config": "3B float8", "skipped": reason})
        return
    seq = ctx.throughput.get("3B", {}).get("seq_len", 8192)
    rows = []
    for f8 in (False, True):
        name = f"3B {'float8' if f8 else 'bf16'} seq {seq}"
        if budget.skipped(sec, 30, {"config": name}):
            continue
        model = None
        try:
            ctx.reset_peak()
            margs = model_args_for("3B", max_seq_len=seq)
            model = build_ours(ctx, margs, compile=True, ac="selective", float8=f8)
            opt = build_optimizer(model, base_config(ctx), ctx.device.type)
            data = torch.randint(0, margs.vocab_size, (1, seq + 1), generator=torch.Generator().manual_seed(0))
            data = data.to(ctx.device)
            t = median_step_times({"s": lm_step(model, opt, data[:, :-1], data[:, 1:], False)}, 4, sync=ctx.sync)["s"]
            tps = seq / t
            rec = {"config": name, "float8": f8, "seq_len": seq, "step_s": t, "tokens_per_s": tps,
                   "mfu_datasheet_peak": tps * margs.flops_per_token(seq) / ctx.datasheet_peak,
                   "peak_mem_gib": ctx.peak_gib()}
            rows.append(rec)
            sec["configs"].append(rec)
        except Exception as e:  # noqa: BLE001
            record_error(sec, name, e)
        finally:
            del model
            opt = None
            free_memory(ctx.device)
            report.write()
    if len(rows) == 2:
        rows[1]["speedup_vs_bf16"] = rows[0]["step_s"] / rows[1]["step_s"]
    sec["notes"].append("float8: torchao tensorwise Float8Linear in the blocks (output layer kept bf16), otherwise "
                        "as section b's ours; bf16 measured again here, sequentially, at the same seq; MFU counts "
                        "the bf16 FLOPs against the bf16 datasheet peak")


def section_smollm2(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    """f: issue 25's comparison on the SmolLM2-135M shape (tools/bench_smollm2.py's layouts):
    ours packed vs transformers padded to the longest (next-token), ours LLM-JEPA separate
    views vs the reference's 3-group and 2-group (4D mask) layouts with transformers' model."""
    import real_model_pair as rmp

    folder = Path(ctx.smollm2_dir)
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        sec["configs"].append({"config": "all", "skipped": f"{folder}/config.json or tokenizer.json not found: "
                               f"bash tools/gpu_prepare.sh copies SmolLM2's config and tokenizer files there"})
        return
    data = ctx.synth_path if ctx.synth_path.is_file() else ctx.chat_path
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    plans = [(b, n) for b in ("flex", "sdpa") for n in (8, 64)] if ctx.cuda else [("sdpa", 2)]  # smoke: the kit, not the time
    rounds, layers = (5, None) if ctx.cuda else (1, 2)
    sec["notes"].append(f"{folder}'s config.json shape{'' if layers is None else f' cut to {layers} layers'} at "
                        f"random init (the same weights on both sides), its tokenizer and ChatML template; the "
                        f"first N lines of {data.name}; {str(dtype).split('.')[-1]} params, forward + backward, "
                        f"no optimizer; median of {rounds} interleaved rounds; ratio: ours / the named variant's "
                        f"step time (next-token: transformers' time / ours, i.e. the tokens/s ratio)")
    for backend, n in plans:
        if budget.skipped(sec, 12 if ctx.cuda else 5, {"config": "all", "samples": n, "backend": backend}):
            continue
        pair = None
        try:
            pair = rmp.load_pair(str(folder), n, data, device=ctx.device, dtype=dtype, weights=False,
                                 attn_backend=backend, n_layers=layers)
            steps, shapes, peaks, losses = {}, {}, {}, {}
            steps["ours next-token"], b = rmp.ours_step(pair, rmp.ntp_cfg(pair.cfg), False)
            shapes["ours next-token"] = "x".join(map(str, b.tokens.shape))
            steps["transformers next-token"], s = rmp.hf_ntp_step(pair, pair.cfg)
            shapes["transformers next-token"] = "x".join(map(str, s))
            steps["ours JEPA separate"], b = rmp.ours_step(pair, pair.cfg, True)
            shapes["ours JEPA separate"] = "x".join(map(str, b.tokens.shape))
            for g in (3, 2):
                steps[f"reference {g} groups"], s = rmp.hf_reference_step(pair, pair.cfg, g)
                shapes[f"reference {g} groups"] = "x".join(map(str, s))
            for name, step in steps.items():
                ctx.reset_peak()
                losses[name] = float(step())
                ctx.sync()
                peaks[name] = ctx.peak_gib()
            times = median_step_times(steps, rounds, sync=ctx.sync)
            ratio = {"ours next-token": (times["transformers next-token"] / times["ours next-token"],
                                         "transformers next-token (tokens/s)"),
                     "ours JEPA separate": (times["ours JEPA separate"] / times["reference 3 groups"],
                                            "reference 3 groups (step time)")}
            for name, t in times.items():
                r, of = ratio.get(name, (None, None))
                sec["configs"].append({"config": name, "samples": n, "backend": backend if name.startswith("ours")
                                       else "sdpa (transformers)", "rows_x_len": shapes[name], "step_s": t,
                                       "ratio": r, "ratio_of": of, "loss": losses[name], "peak_mem_gib": peaks[name]})
        except Exception as e:  # noqa: BLE001
            record_error(sec, f"{backend} {n} samples", e, backend=backend, samples=n)
        finally:
            del pair
            steps = None
            free_memory(ctx.device)
            report.write()


def _documents_meta(seq: int, device, seed: int = 0):
    """One packed row of documents of 256 to 4,096 tokens (MaskMeta: segment ids, positions)."""
    from titan_jepa.models.attention import MaskMeta

    g = torch.Generator().manual_seed(seed)
    seg, pos, start, i = torch.zeros(1, seq, dtype=torch.int64), torch.zeros(1, seq, dtype=torch.int64), 0, 0
    while start < seq:
        n = min(int(torch.randint(256, 4097, (1,), generator=g)), seq - start)
        seg[0, start:start + n], pos[0, start:start + n] = i, torch.arange(n)
        start, i = start + n, i + 1
    return MaskMeta(seg.to(device), pos.to(device))


def section_cp_attention(ctx: Ctx, sec: dict, budget: Budget, report: Report) -> None:
    from torch.nn.attention.flex_attention import flex_attention

    from titan_jepa.models.attention import build_attention_backend
    from titan_jepa.parallel import context_parallel as cpm

    one_rank_mesh(ctx)  # the all-gather runs on a one-rank group (nccl on CUDA)
    hq, hkv, hd = (32, 8, 128) if ctx.cuda else (4, 2, 16)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    seqs = (8192, 32768) if ctx.cuda else (256,)
    sec["notes"].append(f"q/k/v (1, heads, S, {hd}) with {hq}/{hkv} heads, {str(dtype).split('.')[-1]}, one packed row "
                        f"of documents of 256-4,096 tokens; reference: the model's flex backend (BlockMask of the "
                        f"whole row); cp1_flex: AllGatherAttention with flex_block_mask (head-tail sharding at "
                        f"cp 1 is the identity); cp1_sdpa: AllGatherAttention with the dense cp_mask")
    if not ctx.cuda:
        sec["notes"].append("CPU smoke: eager flex_attention, forward only: " + FLEX_NO_CPU_BACKWARD)
        cpm._FLEX = flex_attention
    flex = build_attention_backend("flex")
    if not ctx.cuda:
        flex._flex = flex_attention
    for seq in seqs:
        name = f"S {seq}"
        if budget.skipped(sec, 20 if ctx.cuda else 5, {"config": name}):
            continue
        try:
            ctx.reset_peak()
            rec = {"config": name, **_cp_attention_case(ctx, flex, seq, hq, hkv, hd, dtype)}
            rec["peak_mem_gib"] = ctx.peak_gib()
            sec["configs"].append(rec)
        except Exception as e:  # noqa: BLE001
            record_error(sec, name, e)
        free_memory(ctx.device)
        report.write()


def _cp_attention_case(ctx: Ctx, flex, seq: int, hq: int, hkv: int, hd: int, dtype) -> dict:
    """Section g at one length: the differences to the flex backend and, on CUDA, the times."""
    from titan_jepa.parallel import context_parallel as cpm

    meta = _documents_meta(seq, ctx.device)
    g = torch.Generator(device=ctx.device).manual_seed(1)
    q, k, v = (torch.randn(1, h, seq, hd, generator=g, device=ctx.device, dtype=dtype) for h in (hq, hkv, hkv))
    sh = cpm.head_tail(seq, 1)
    masks = {"reference": flex.build_mask(meta, 1, seq, ctx.device),
             "cp1_flex": cpm.flex_block_mask(meta, sh, 0, ctx.device),
             "cp1_sdpa": cpm.cp_mask(meta, sh, 0, ctx.device)}
    group = ctx.mesh.get_group()

    def run(kind, backward=ctx.cuda):
        qq, kk, vv = (t.detach().requires_grad_(backward) for t in (q, k, v))
        if kind == "reference":
            out = flex.attend(qq, kk, vv, masks[kind])
        else:
            out = cpm.AllGatherAttention.apply(qq, kk, vv, masks[kind], group)
        if not backward:
            return out.detach(), None
        out.float().pow(2).sum().backward()
        return out.detach(), [t.grad for t in (qq, kk, vv)]

    def rel(a, b):
        return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30))

    results = {kind: run(kind) for kind in masks}
    rec = {}
    ref_out, ref_grads = results["reference"]
    for kind in ("cp1_flex", "cp1_sdpa"):
        out, grads = results[kind]
        rec[f"{kind}_out_rel"] = rel(out, ref_out)
        if grads is not None:
            rec[f"{kind}_grad_rel"] = max(rel(a, b) for a, b in zip(grads, ref_grads))
    if ctx.cuda:
        times = median_step_times({kind: (lambda kind=kind: run(kind)) for kind in masks}, 3, ctx.sync)
        rec.update({f"{kind}_ms": round(1e3 * t, 2) for kind, t in times.items()})
        rec.update({f"{kind}_vs_reference": round(times[kind] / times["reference"], 3)
                    for kind in ("cp1_flex", "cp1_sdpa")})
    return rec


SECTION_FNS = {"env": section_env, "a_flex_vs_sdpa": section_flex_vs_sdpa, "b_throughput": section_throughput,
               "c_jepa_overhead": section_jepa_overhead, "d_float8": section_float8, "f_smollm2": section_smollm2,
               "g_cp_attention": section_cp_attention}


def float8_unavailable(ctx: Ctx) -> str | None:
    """Why section d cannot run here, or None."""
    try:
        import torchao.float8  # noqa: F401
    except Exception as e:  # noqa: BLE001  (ImportError, or a torchao built for another torch)
        return f"skipped: torchao not importable ({type(e).__name__})"
    if not ctx.cuda or torch.cuda.get_device_capability(ctx.device) < (8, 9):
        return "skipped: float8 matmuls need a CUDA GPU of compute capability >= 8.9"
    return None


def section_budget(name: str, nominal: dict[str, float], hard_limit_s: float, started: float) -> float:
    """The section's own budget plus what the earlier sections left unused, never past the
    hard limit (less the report margin)."""
    order = list(nominal)
    left = hard_limit_s - (time.monotonic() - started) - REPORT_MARGIN_S
    later = sum(nominal[n] for n in order[order.index(name):])
    return max(1.0, min(nominal[name] + max(0.0, left - later), left))


def run_bench(args, started: float) -> Report:
    out = Path(args.out)
    report = Report(out, "gpu_bench", "smoke" if args.smoke else "bench", vars(args), bench_markdown,
                    derive=add_peak_memory_section)
    ctx = Ctx(args)
    if not ctx.cuda and not args.smoke:
        report.data["env"]["error"] = "no CUDA device: --bench needs one GPU (use --smoke on CPU)"
        report.write()
        raise SystemExit("error: no CUDA device is visible; --bench runs on one GPU, use --smoke on a CPU")
    if ctx.cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 comparisons stay fp32
        # 1B, 3B, float8, AC-wrapped or not: more block graphs than dynamo's default 8 per code
        # object; past the limit it would run the blocks eager (and slower) without a word
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
    watchdog = start_hard_watchdog(report, args.hard_limit_s - (time.monotonic() - started))
    nominal = {n: b * args.budget_scale for n, b in (SMOKE_BUDGETS if args.smoke else BUDGETS).items()
               if n in (args.sections or SECTIONS)}
    if "d_float8" in nominal and float8_unavailable(ctx):
        nominal["d_float8"] = min(nominal["d_float8"], 5.0)
    try:
        for name in nominal:
            run_section(report, name, section_budget(name, nominal, args.hard_limit_s, started), SECTION_FNS[name], ctx)
    finally:
        watchdog.cancel()
        import torch.distributed as dist

        if ctx.own_group and dist.is_initialized():
            dist.destroy_process_group()
    report.data["finished"] = now()
    report.write()
    return report


# ---- --repro: the paper's from-scratch setting, scaled to one call ---------------------------
REPRO_ARMS = {  # name: config sections merged into the base
    "next-token": {"jepa": {"enable": False}},
    "jepa l2 k3": {"jepa": {"enable": True, "lambda": 2.0, "k": 3}},
    "jepa l1 k1": {"jepa": {"enable": True, "lambda": 1.0, "k": 1}},
}


def repro_markdown(data: dict) -> str:
    out = [f"# gpu_repro ({data['mode']}) {data['started']}\n\n"]
    out += [f"- {n}\n" for n in data.get("notes", [])]
    out.append("\n" + table(data.get("summary", []), [
        ("arm", "arm"), ("seeds", "seeds"), ("exact_mean", "exact match % mean"), ("exact_std", "± std"),
        ("startswith_mean", "startswith % mean"), ("startswith_std", "± std"),
        ("p_vs_ntp", "p (arm > next-token, paired one-tailed, exact)")]))
    out.append("\n" + table(data.get("runs", []), [
        ("arm", "arm"), ("seed", "seed"), ("exact", "exact %"), ("startswith", "startswith %"),
        ("final_loss", "final loss"), ("steps", "steps"), ("train_s", "train s"), ("eval_s", "eval s"),
        ("skipped", "skipped / error")]))
    return "".join(out)


def repro_summary(runs: list[dict]) -> list[dict]:
    from stats import mean_std, paired_t_test_one_tailed

    done = [r for r in runs if "exact" in r]
    base = {r["seed"]: r["exact"] for r in done if r["arm"] == "next-token"}
    out = []
    for arm in REPRO_ARMS:
        rs = [r for r in done if r["arm"] == arm]
        if not rs:
            continue
        em, es = mean_std([r["exact"] for r in rs])
        sm, ss = mean_std([r["startswith"] for r in rs])
        p = None
        pairs = [(r["exact"], base[r["seed"]]) for r in rs if r["seed"] in base]
        if arm != "next-token" and len(pairs) >= 2:
            p = paired_t_test_one_tailed([a for a, _ in pairs], [b for _, b in pairs])[1]
        out.append({"arm": arm, "seeds": len(rs), "exact_mean": em, "exact_std": es,
                    "startswith_mean": sm, "startswith_std": ss, "p_vs_ntp": p})
    return out


def repro_config(args, arm: str, seed: int, train_path: Path):
    """The run's JobConfig: train_configs/repro_synth_small.toml with this mode's sizes."""
    rows = args.rows if arm != "next-token" else max(1, args.rows // 2)  # views double the tokens
    extra = {"job": {"name": f"{arm.replace(' ', '_')}_s{seed}", "dump_folder": str(Path(args.work_dir) / "repro"),
                     "seed": seed},
             "model": {"flavor": args.flavor, "attn_backend": "sdpa"},
             "tokenizer": {"path": str(TOKENIZER)},
             "data": {"path": str(train_path), "num_epochs": args.epochs},
             "training": {"seq_len": args.seq_len, "global_batch_size": rows, "local_batch_size": rows,
                          "device": "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"},
             "optimizer": {"lr": args.lr},
             "lr_scheduler": {"warmup_steps": args.warmup},
             "compile": {"enable": args.compile},
             "metrics": {"log_freq": 50, "enable_tensorboard": False, "flop_counter_steps": 0},
             "checkpoint": {"enable": False, "model_only_export": True},
             "jepa": {"enable": False}}
    for section, values in REPRO_ARMS[arm].items():
        extra[section] = {**extra.get(section, {}), **values}
    return load_config(ROOT / "train_configs" / "repro_synth_small.toml", extra=extra)


def run_repro(args) -> Report:
    from sweep import final_checkpoint

    from titan_jepa.eval.run import evaluate, load_model, read_rows, score
    from titan_jepa.train import train

    data_dir = Path(args.data_dir)
    train_path, test_path = data_dir / "synth_train.jsonl", data_dir / "synth_test.jsonl"
    for p in (train_path, test_path):
        if not p.is_file():
            raise SystemExit(f"error: {p} does not exist; copy the synth files there with: bash tools/gpu_prepare.sh")
    out = Path(args.out)
    report = Report(out, "gpu_repro", "repro-smoke" if args.smoke else "repro", vars(args), repro_markdown)
    cuda = torch.cuda.is_available() and not args.smoke
    device, dtype = torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 master weights, TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    margs = model_args_for(args.flavor)
    rows = read_rows(test_path, args.eval_limit)
    runs = report.data["runs"] = []
    report.data["notes"] = [
        f"model {args.flavor}: {margs.num_params() / 1e6:.1f}M parameters (dim {margs.dim}, {margs.n_layers} "
        f"layers), random init; tokenizer {TOKENIZER.relative_to(ROOT)}",
        f"data {train_path.name}, {args.epochs} epoch(s), rows of {args.seq_len}; JEPA arms {args.rows} rows per "
        f"step, next-token {max(1, args.rows // 2)} (about the same samples per step, the same steps)",
        f"AdamW lr {args.lr}, warmup {args.warmup}, cosine to 10 % (train_configs/repro_synth_small.toml), "
        f"{'TF32 matmuls, ' if cuda else ''}compile {args.compile}, sdpa attention",
        f"scored on {len(rows)} lines of {test_path.name}: greedy decoding (KV cache, {dtype}), at most "
        f"{args.max_new_tokens} new tokens, exact match and startswith (titan_jepa.eval)",
        f"budget {args.budget_s:.0f} s: a run starts only when the longest earlier run (x1.1) still fits"]
    report.data["env"] = {"torch": torch.__version__, "device": str(device),
                          "gpu": torch.cuda.get_device_name(device) if cuda else None}
    report.write()
    budget, longest = Budget(args.budget_s), 0.0
    for seed in args.seeds:
        for arm in REPRO_ARMS:
            rec = {"arm": arm, "seed": seed}
            need = 1.1 * longest
            if longest and budget.left() < need:
                rec["skipped"] = f"skipped: {budget.left():.0f} s of the {args.budget_s:.0f} s budget left, a run takes ~{need:.0f} s"
                runs.append(rec)
                continue
            t0 = time.monotonic()
            try:
                cfg = repro_config(args, arm, seed, train_path)
                if cfg.run_folder.exists():
                    shutil.rmtree(cfg.run_folder)
                losses = train(cfg)
                rec.update({"steps": len(losses), "final_loss": losses[-1], "train_s": round(time.monotonic() - t0, 1)})
                t1 = time.monotonic()
                tok = build_tokenizer(cfg.tokenizer)
                model, _ = load_model(cfg, final_checkpoint(cfg.run_folder), tok.vocab_size, device, dtype)
                res = evaluate(model, tok, rows, "exact", args.eval_batch_size, args.max_new_tokens, progress=False)
                preds = [p["prediction"] for p in res["predictions"]]
                rec.update({"exact": 100 * res["accuracy"], "startswith": 100 * score(rows, preds, "startswith")["accuracy"],
                            "eval_s": round(time.monotonic() - t1, 1)})
                del model
                if not args.keep_runs:
                    shutil.rmtree(cfg.run_folder, ignore_errors=True)
            except Exception as e:  # noqa: BLE001  (recorded; the other runs go on)
                rec.update({"skipped": f"error: {type(e).__name__}: {e}"[:300], "traceback": tb_tail(e)})
            longest = max(longest, time.monotonic() - t0)
            runs.append(rec)
            report.data["summary"] = repro_summary(runs)
            free_memory(device)
            report.write()
    report.data["finished"] = now()
    report.write()
    return report


# ---- command line ----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bench", action="store_true", help="the measurements (default)")
    mode.add_argument("--repro", action="store_true", help="the mini reproduction on synth")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (what the tests run)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "outputs" / "gpu_bench"),
                   help="where the JSON and Markdown go (default: $OUT, else outputs/gpu_bench)")
    p.add_argument("--work-dir", default=None, help="scratch folder: generated data, runs (default: a temp dir)")
    g = p.add_argument_group("--bench")
    g.add_argument("--sections", nargs="*", choices=SECTIONS, help="only these sections (default: all)")
    g.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    g.add_argument("--hard-limit-s", type=float, default=None,
                   help="write the report and exit this long after the start (default: 465 s, smoke 600 s)")
    g = p.add_argument_group("--repro")
    g.add_argument("--data-dir", default=str(ROOT / ".gpu_carry"), help="holds synth_train.jsonl, synth_test.jsonl")
    p.add_argument("--smollm2-dir", default=str(ROOT / ".gpu_carry" / "smollm2"),
                   help="section f: SmolLM2-135M-Instruct's config.json, tokenizer.json, tokenizer_config.json "
                        "and chat_template.jinja (no weights: random init; tools/gpu_prepare.sh copies them)")
    g.add_argument("--seeds", type=int, nargs="+", default=[82, 23, 37, 84, 4])
    g.add_argument("--budget-s", type=float, default=None, help="stop starting runs past this (default 520 s)")
    g.add_argument("--flavor", default=None, help=f"default {REPRO_FLAVOR} (smoke: debug)")
    g.add_argument("--epochs", type=int, default=None, help="default 4 (smoke: 1)")
    g.add_argument("--seq-len", type=int, default=None, help="default 512 (smoke: 128)")
    g.add_argument("--rows", type=int, default=None, help="JEPA rows per step, next-token half (default 16, smoke 4)")
    g.add_argument("--lr", type=float, default=None, help="default 5e-4 (smoke: 2e-3)")
    g.add_argument("--warmup", type=int, default=None, help="default 50 (smoke: 2)")
    g.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    g.add_argument("--eval-limit", type=int, default=-1, help="score the first N test lines (default: all)")
    g.add_argument("--eval-batch-size", type=int, default=None, help="default 256 (smoke: 8)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default 64 (smoke: 16)")
    g.add_argument("--keep-runs", action="store_true", help="keep the run folders (checkpoints) in --work-dir")
    a = p.parse_args(argv)
    smoke = a.smoke
    defaults = {"flavor": ("debug", REPRO_FLAVOR), "epochs": (1, 4), "seq_len": (128, 512), "rows": (4, 16),
                "lr": (2e-3, 5e-4), "warmup": (2, 50), "eval_batch_size": (8, 256), "max_new_tokens": (16, 64),
                "budget_s": (240.0, 520.0), "hard_limit_s": (600.0, 465.0)}
    for key, (small, full) in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, small if smoke else full)
    if a.smoke and a.repro and a.seeds == p.get_default("seeds"):
        a.seeds = [82]
    if a.work_dir is None:
        a.work_dir = tempfile.mkdtemp(prefix="gpu_bench_")
    return a


def main(argv=None, started: float | None = None) -> None:
    """``started``: when the clock of --hard-limit-s started (default: now)."""
    started = time.monotonic() if started is None else started
    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # as the tests run: the CPU is shared
    t0 = time.monotonic()
    report = run_repro(args) if args.repro else run_bench(args, started)
    print(report.markdown(report.data))
    print(f"gpu_bench: {time.monotonic() - t0:.0f} s; written {report.out}/{report.name}.json and .md", flush=True)


if __name__ == "__main__":
    main(started=T_START)
