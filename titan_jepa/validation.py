"""Validation during training: the held-out loss and an optional generation eval.

    validator = Validator(cfg, tokenizer, dp, max_seq_len, objectives)   # checks the data at once
    if validator.due(step):                     # every validation.freq steps, and the last
        metrics.log_val(step, validator.run(model, runner, objective))

The loss (``[validation] path``, read as ``[data]`` is: kind, text_field, JEPA views, STP
spans) is the training objective without gradients, in eval mode, run by the same runner
(parallel/schedule.py, a pipeline schedule forward-only under pp): every term's sum over its
items (target tokens, JEPA samples, STP spans) and the item counts are summed over all
validation batches and the data-parallel group, then divided (``Objectives.metrics``), so
the result does not depend on the layout or the number of micro-batches. The validation
data is cut into the same batch slots as training (global_batch_size / local_batch_size
slots; rank r owns slots r, r + dp, ...), and each validation batch is one global batch.
Its loaders are built afresh at every validation (one pass, in file order, no shuffle):
they are not part of the training loader's state, and a resumed run validates exactly as
an uninterrupted one. ``validation.steps`` caps the number of global batches (-1: the
whole set). Near the end of the set, a slot that has run out runs its first batch again
with weight zero, so every rank makes the same forward calls (FSDP / TP collectives stay
in lock-step); InfoNCE negatives gathered over the group include those repeats.

Generation eval (``validation.eval_scorer``): the first ``eval_samples`` lines of
``eval_path`` (default: ``path``; {"messages": [...]} lines, the gold is the last assistant
message) are shared out over the data-parallel ranks (rank r takes lines r, r + dp, ...;
shares are padded to one size with weight-zero repeats), prompted as titan_jepa/eval does
(the model's chat template and its generation prompt) and decoded greedily with the KV-cache
generator in batches of ``eval_batch_size``. Every batch decodes exactly
``eval_max_new_tokens`` tokens (a row's answer ends at its first stop token), so every
rank runs the same number of forward calls on the FSDP-sharded model. The scorer's
correct counts are summed over the group: ``val/accuracy``. Under context parallelism the
lines are shared over dp x cp: the KV-cache decoder runs the whole prompt on its rank (no
all-gather attention), so the cp ranks decode lines of their own. Tensor parallelism is not
supported here (config.py says so); evaluate TP runs' checkpoints with titan_jepa.eval.
"""

from __future__ import annotations

import copy
import logging
import math

import torch

from titan_jepa.data.loader import build_dataloader
from titan_jepa.data.sources import DataError

logger = logging.getLogger("titan_jepa")


def check_keep_best(cfg, objectives: list) -> None:
    """checkpoint.keep_best must name a metric this run's validation logs: val/ + the
    objectives' metric names (and val/batches) with validation.path, val/accuracy with a
    generation eval. Raised before any heavy work (train.setup calls it)."""
    from titan_jepa.config.load import _closest
    from titan_jepa.errors import ConfigError
    from titan_jepa.objectives import Objectives

    name, v = cfg.checkpoint.keep_best, cfg.validation
    if not name:
        return
    logged = set()
    if v.path:
        logged |= {f"val/{m}" for m in Objectives(objectives).metric_names()} | {"val/batches"}
    if v.eval_scorer:
        logged.add("val/accuracy")
    if name not in logged:
        raise ConfigError(f"checkpoint.keep_best = '{name}' is not logged by this run's validation; choose one of "
                          f"{', '.join(sorted(logged))}{_closest(name, sorted(logged))}")


def validation_config(cfg):
    """A copy of ``cfg`` whose [data] reads the validation set: one pass, in file order."""
    v = copy.deepcopy(cfg)
    v.data.path = cfg.validation.path
    v.data.hf_split = cfg.validation.hf_split
    v.data.num_epochs = 1
    v.data.shuffle_buffer = 0
    return v


class Validator:
    def __init__(self, cfg, tokenizer, dp, max_seq_len: int, objectives: list, eval_dp=None):
        """``eval_dp``: the group generation eval shares its lines over (default ``dp``; under
        context parallelism dp x cp: decoding needs no CP, so each cp rank takes its own lines)."""
        self.cfg, self.tok, self.dp, self.objectives = cfg, tokenizer, dp, objectives
        v = cfg.validation
        self.freq, self.steps, self.last_step = v.freq, v.steps, cfg.training.steps
        self.num_slots = cfg.training.global_batch_size // cfg.training.local_batch_size
        self.slots = list(range(dp.rank, self.num_slots, dp.size))
        self.data_cfg = validation_config(cfg) if v.path else None
        self._filler = None
        if self.data_cfg is not None:
            # a slot without a single batch is a too-small set: say so before training
            try:
                firsts = [next(self._loader(slot), None) for slot in self.slots]
            except DataError as e:  # the [data] messages name data.path: here it is validation.path
                raise DataError(str(e).replace("data.path", "validation.path")) from None
            for slot, b in zip(self.slots, firsts):
                if b is None:
                    raise DataError(f"validation.path '{v.path}' gives no batch to slot {slot} of "
                                    f"{self.num_slots} (global_batch_size / local_batch_size); use a larger "
                                    f"validation set")
            self._filler = firsts[0]
        self.generation = GenerationEval(cfg, tokenizer, eval_dp or dp, max_seq_len) if v.eval_scorer else None

    def _loader(self, slot: int):
        return build_dataloader(self.data_cfg, self.tok, dp_rank=slot, dp_world=self.num_slots,
                                objectives=self.objectives)

    def due(self, step: int) -> bool:
        return step % self.freq == 0 or step == self.last_step

    def run(self, model, runner, objective) -> dict[str, float]:
        """Validation metrics (``val/...``), the same on every rank: ``runner`` runs the
        micro-batches forward only, ``objective`` (Objectives) scores them."""
        out = {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.data_cfg is not None:
                    out.update(self._loss(model, runner, objective))
                if self.generation is not None:
                    out.update(self.generation.run(model))
        finally:
            model.train(was_training)
        return out

    def _loss(self, model, runner, objective) -> dict[str, float]:
        device = next(iter(model.parameters())).device
        loaders = [self._loader(slot) for slot in self.slots]
        total_sums = total_counts = None
        batches = 0
        while self.steps == -1 or batches < self.steps:
            mbs = [next(loader, None) for loader in loaders]
            more = torch.tensor([float(any(mb is not None for mb in mbs))], device=device)
            if self.dp.all_reduce_sum(more).item() == 0:
                break
            weights = [0.0 if mb is None else 1.0 for mb in mbs]
            mbs = [(mb or self._filler).to(device) for mb in mbs]
            # by the count vector's identity: a runner may hand the loss a view of the micro-batch
            # (context parallelism: this rank's tokens), which keeps its count vector
            weight_of = {id(mb.count_vector): w for mb, w in zip(mbs, weights)}

            def loss_fn(outputs, mb):  # each micro-batch's own counts: its sums, undivided
                result = objective(outputs, mb, mb.count_vector.clamp(min=1))
                return torch.zeros((), device=device), result.sums * weight_of[id(mb.count_vector)]

            sums = torch.zeros(len(objective.sum_names), dtype=torch.float64, device=device)
            for mb_sums in runner.run(mbs, loss_fn, backward=False):
                sums += mb_sums
            sums = runner.share(sums)
            counts = sum(mb.count_vector * w for mb, w in zip(mbs, weights))
            total_sums = sums if total_sums is None else total_sums + sums
            total_counts = counts if total_counts is None else total_counts + counts
            batches += 1
        reduced = self.dp.all_reduce_sum(torch.cat([total_sums, total_counts]))
        sums, counts = reduced.split([total_sums.numel(), total_counts.numel()])
        metrics = objective.metrics(sums, counts)
        out = {f"val/{k}": v for k, v in metrics.items() if not k.startswith("tokens_")}
        out["val/batches"] = batches
        return out


class GenerationEval:
    """Greedy decoding on the first eval_samples test lines, scored, data-parallel."""

    def __init__(self, cfg, tokenizer, dp, max_seq_len: int):
        from titan_jepa.data.chat_template import generation_prompt
        from titan_jepa.eval import scorers as S
        from titan_jepa.eval.run import read_rows

        v = cfg.validation
        path = v.eval_path or v.path
        rows = read_rows(path, v.eval_samples)
        self.scorer = S.resolve_scorer(v.eval_scorer, path)
        self.match = S.MATCHERS[self.scorer]
        self.tok, self.dp = tokenizer, dp
        self.batch_size, self.max_new = v.eval_batch_size, v.eval_max_new_tokens
        width = math.ceil(len(rows) / dp.size)
        share = rows[dp.rank::dp.size]
        self.weights = [1] * len(share) + [0] * (width - len(share))
        share += [rows[0]] * (width - len(share))
        self.prompts = [generation_prompt(tokenizer, r["messages"]) for r in share]
        self.golds = [r["messages"][-1]["content"] for r in share]
        longest = max(len(p) for p in self.prompts)
        if longest + self.max_new > max_seq_len:
            raise DataError(f"validation eval: a prompt of {longest} tokens + eval_max_new_tokens "
                            f"{self.max_new} exceeds the model's max_seq_len {max_seq_len}; lower "
                            f"validation.eval_max_new_tokens or raise model.max_seq_len")
        self.stop = set(tokenizer.stop_ids)
        self.last_predictions: list[str] = []

    def run(self, model) -> dict[str, float]:
        from titan_jepa.eval.generate import greedy_generate

        preds = []
        for i in range(0, len(self.prompts), self.batch_size):
            # no stop ids: every batch decodes max_new tokens on every rank (lock-step)
            outs = greedy_generate(model, self.tok, self.prompts[i:i + self.batch_size], self.max_new,
                                   stop_ids=())
            for ids in outs:
                end = next((j for j, t in enumerate(ids) if t in self.stop), len(ids))
                preds.append(self.tok.decode(ids[:end]))
        self.last_predictions = preds
        correct = sum(w * bool(self.match(p, g)) for p, g, w in zip(preds, self.golds, self.weights))
        device = next(iter(model.parameters())).device
        totals = self.dp.all_reduce_sum(torch.tensor([float(correct), float(sum(self.weights))],
                                                     dtype=torch.float64, device=device)).tolist()
        return {"val/accuracy": totals[0] / max(totals[1], 1.0), "val/eval_samples": int(totals[1])}
