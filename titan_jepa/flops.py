"""FLOPs of a training step: an analytic count from the batch, and torch's flop counter.

Analytic training FLOPs of one micro-batch (forward + backward = 3 x forward):

    6 * P * tokens  +  12 * L * d * pairs

P: the non-embedding parameters (the output projection included); tokens: every token the
model runs on (padding included); pairs: the (query, key) pairs the attention mask lets
through (block-causal per segment, plus the shared-prefix context). Each visible pair
costs 2 * d FLOPs in Q K^T and 2 * d in A V per layer. With the FlexAttention backend the
fully masked blocks are skipped, so this is what a block-sparse kernel spends (up to the
partially filled blocks); the dense CPU/SDPA path computes every pair of the row.

``metrics.flop_counter_steps`` also logs torch.utils.flop_counter's count for the first steps
(``flops_counted``). It counts the matmuls exactly; on CPU it does not count the SDPA kernel,
and on CUDA it charges attention for every (query, key) pair of the row whatever the mask.

The "next-token equivalent" of a micro-batch counts only its full sequences (no view
segments, no padding): what an ideally packed next-token-only run over the same samples
spends. ``checkpoint.same_flop`` compares the two.

All four counts are made on the CPU when the batch is collated (``BatchCounts`` in
data/batch.py; ``visible_pairs`` below computes the pairs from a Batch, for checking). The
step all-reduces them with the loss counts before the forward and hands the global counts
of each step to the tracker at sync steps (train.py), so counting costs no host sync.
"""

from __future__ import annotations

import torch

from titan_jepa.data.batch import COUNT_FIELDS, Batch
from titan_jepa.models.llama import ModelArgs

# counts per micro-batch (BatchCounts fields), summed over micro-batches and ranks
FLOP_COUNTS = ("tokens", "pairs", "ntp_tokens", "ntp_pairs")
# their places in Batch.count_vector (consecutive: a slice is a view, no index tensor)
FLOP_SLICE = slice(COUNT_FIELDS.index(FLOP_COUNTS[0]), COUNT_FIELDS.index(FLOP_COUNTS[0]) + len(FLOP_COUNTS))
assert COUNT_FIELDS[FLOP_SLICE] == FLOP_COUNTS


def visible_pairs(batch: Batch) -> int:
    """(query, key) pairs the attention mask allows in a micro-batch on the CPU (a check of
    ``BatchCounts.pairs``, which collate computes from the rows)."""
    bsz, seq = batch.tokens.shape
    if batch.segment_ids is None:
        return bsz * seq * (seq + 1) // 2
    pairs = 0
    for row in batch.segment_ids:
        _, lengths = torch.unique_consecutive(row, return_counts=True)
        pairs += int((lengths * (lengths + 1) // 2).sum())
    if batch.context_segment is not None:
        pairs += int(batch.context_len[batch.context_segment >= 0].sum())
    return pairs


def flop_counts(batch: Batch) -> torch.Tensor:
    """FLOP_COUNTS of one collated micro-batch (float64, CPU), from its BatchCounts."""
    c = batch.counts
    return torch.tensor([c.tokens, c.pairs, c.ntp_tokens, c.ntp_pairs], dtype=torch.float64)


def training_flops(args: ModelArgs, tokens: float, pairs: float) -> float:
    return 6.0 * args.num_params(include_embedding=False) * tokens + 12.0 * args.n_layers * args.dim * pairs


class SameFlopTracker:
    """Cumulative FLOPs of this run and of a next-token-only run over the same samples.

    ``ntp_equivalent_step`` is the step a next-token-only run would have reached with the
    FLOPs spent so far: step * (this run's FLOPs / the next-token FLOPs of the same data).
    A same-FLOP checkpoint is due each time it passes a multiple of ``interval``.
    """

    def __init__(self, args: ModelArgs, interval: int):
        self.args, self.interval = args, interval
        self.flops = self.ntp_flops = 0.0
        self.next_milestone = interval

    def update(self, step: int, counts) -> list[int]:
        """Add one step's global FLOP_COUNTS (4 numbers); returns the milestones passed at
        this step."""
        tokens, pairs, ntp_tokens, ntp_pairs = counts.tolist() if isinstance(counts, torch.Tensor) else counts
        self.flops += training_flops(self.args, tokens, pairs)
        self.ntp_flops += training_flops(self.args, ntp_tokens, ntp_pairs)
        ntp_per_step = self.ntp_flops / step
        passed = []
        while self.flops >= self.next_milestone * ntp_per_step:
            passed.append(self.next_milestone)
            self.next_milestone += self.interval
        return passed

    @property
    def ratio(self) -> float:
        """This run's FLOPs over the next-token FLOPs of the same data."""
        return self.flops / max(self.ntp_flops, 1.0)

    def state_dict(self) -> dict:
        return {"flops": self.flops, "ntp_flops": self.ntp_flops, "next_milestone": self.next_milestone}

    def load_state_dict(self, sd: dict) -> None:
        self.flops, self.ntp_flops, self.next_milestone = sd["flops"], sd["ntp_flops"], sd["next_milestone"]
