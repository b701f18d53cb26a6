"""CRD's parts as small pieces: the memory bank, negative sampling, the normalisation constant Z, NCE/InfoNCE.

The loss module (crossmodal.losses.crd) wires these together; tests and benchmarks call them directly.
Shapes: B anchors in the batch (this rank's), K negatives per anchor, N memory rows, D = feat_dim.

Negatives are drawn on the device with torch from uniform draws, with no Python loop over samples and
no host synchronisation, so a step never waits on the CPU:
- `relax`: uniform over the N - 1 rows other than the anchor's own (draw u in [0, N-1), add 1 where u >= index);
- `exact`: uniform over the rows of the other classes. Rows are kept sorted by class; draw u in [0, N - n_c)
  and skip the anchor's class block by adding n_c where u >= start_c. Anchors whose row is unlabeled (-1)
  have no class to avoid and fall back to `relax`.
Per anchor, the K draws are distinct (without replacement), as the reference code draws them
(`np.random.choice(candidates, K, replace=False)`, and with replacement only where an anchor has fewer than K
candidates): random keys over the anchor's candidate positions, the K smallest kept (`sample_negatives`,
`replacement=False`). That costs O(B x N) per step, against O(B x K) for i.i.d. draws with replacement
(`replacement=True`: NCE's textbook noise samples, a sample's duplicates counted as often as drawn), which is
the option for very large N (ImageNet: B x N keys are 1.3 GB per step at batch 256).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.distributed import all_gather_concat, rank_and_world
from crossmodal.errors import ConfigError

# Per-anchor negatives: score every memory row with one (B, D) x (D, N) matmul and pick the K columns while
# N <= ALL_ROWS_FACTOR * K, else gather the (B, K, D) rows. The matmul costs ~4BND flops (forward + backward),
# the gather ~12BKD bytes of memory traffic; devices do 10-100 flops per byte, so the matmul wins up to
# N/K of a few tens (6-13x faster at N/K = 3-12 on CPU, benchmarks/results/crd_speed.md), and its (B, N)
# scores take less memory than (B, K, D) rows whenever N < K * D.
ALL_ROWS_FACTOR = 32
# Distinct negatives on a CPU: numpy's choice per anchor ("seeds") from this many candidates up, random keys +
# topk ("keys") below. Measured at batch 64, one thread (median ms, keys / seeds): N 1,000: 1.1 / 1.4 (K 62) and
# 1.4 / 5.8 (K 333); N 3,000: 6.8 / 1.8 and 8.5 / 6.7; N 10,000: 25 / 6.6 and 39 / 21; N 30,000: 78 / 12 and
# 101 / 29 (K = N/16 and N/3).
SEEDS_MIN_WIDTH = 4096


# --------------------------------------------------------------------------------------- memory bank
def init_memory_rows(num_rows: int, dim: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(num_rows, dim) rows uniform in [-1/sqrt(dim/3), +1/sqrt(dim/3)], as the reference initialises its memory."""
    bound = 1.0 / math.sqrt(dim / 3)
    return torch.rand(num_rows, dim, generator=generator).mul_(2 * bound).sub_(bound)


def momentum_rows(old: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """L2-normalised m * old + (1 - m) * new, row by row: the memory's update rule."""
    mixed = old * momentum + new * (1.0 - momentum)  # (B, D)
    return mixed / mixed.norm(dim=1, keepdim=True)


class ContrastMemory(nn.Module):
    """One memory bank: a unit-norm row per training sample, scored against anchors, updated with momentum.

    `score_all_rows` picks how per-anchor negatives are scored (same numbers either way): True scores
    every row with one (B, N) matmul and picks the K columns; False gathers the (B, K, D) rows and uses
    bmm like the reference; None (default) chooses by N <= ALL_ROWS_FACTOR * K.

    `dtype` is how the rows are stored: float32 (default, the reference) or a half type (float16,
    bfloat16) that halves the bank (1.28M ImageNet rows x 128: 655 MB -> 328 MB). Half rows are only
    storage: the rows a step reads are converted to float32 before scoring, the update is computed in
    float32 and rounded once when written back, so the scores and the loss stay float32 computations.
    """

    def __init__(self, num_rows: int, dim: int, momentum: float = 0.5, score_all_rows: Optional[bool] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.momentum = momentum
        self.score_all_rows = score_all_rows
        # (N, D), updated in place only: the tensor never moves, so a captured CUDA graph keeps seeing it.
        # Half rows are the float32 initial rows rounded (the same random draws as a float32 bank).
        self.register_buffer("rows", init_memory_rows(num_rows, dim).to(dtype))

    @property
    def num_rows(self) -> int:
        """N, the number of rows (training samples)."""
        return self.rows.shape[0]

    def score(self, anchors: torch.Tensor, index: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """(B, K+1) dot products of anchors (B, D) with their own row (column 0) and their negatives.

        `negatives` is (B, K), one set per anchor, or (K,), one set shared by the batch.
        """
        rows = self.rows
        compute = anchors.dtype  # float32 in CRD; half rows are converted after they are picked
        if negatives.dim() == 1:  # shared negatives: one (B, D) x (D, K) matmul
            positive = (anchors * rows[index].to(compute)).sum(dim=1, keepdim=True)  # (B, 1)
            return torch.cat([positive, anchors @ rows[negatives].to(compute).T], dim=1)  # (B, K+1)
        columns = torch.cat([index[:, None], negatives], dim=1)  # (B, K+1), positive first
        all_rows = self.score_all_rows
        if all_rows is None:
            all_rows = self.num_rows <= ALL_ROWS_FACTOR * negatives.shape[1]
        if all_rows:
            if rows.dtype != compute:
                rows = rows.to(compute)  # a converted copy, which the in-place update cannot touch
            elif torch.is_grad_enabled() and anchors.requires_grad:
                # Autograd keeps the rows for the matmul's backward, and the memory update writes them in
                # place before that backward runs: it keeps a copy (one N x D copy a step, as an
                # out-of-place update would cost).
                rows = rows.clone()
            return (anchors @ rows.T).gather(1, columns)  # (B, N) -> (B, K+1)
        gathered = rows.index_select(0, columns.flatten()).view(*columns.shape, -1).to(compute)  # (B, K+1, D)
        return torch.bmm(gathered, anchors[:, :, None]).squeeze(2)  # (B, K+1, D) x (B, D, 1) -> (B, K+1)

    @torch.no_grad()
    def update(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Move rows `index` (B,) towards `embeddings` (B, D) with momentum and renormalise (no autograd).

        Computed in float32 (at least) and rounded once to the rows' dtype when written back."""
        compute = torch.promote_types(self.rows.dtype, torch.float32)
        updated = momentum_rows(self.rows[index].to(compute), embeddings.to(compute), self.momentum)  # (B, D)
        self.rows.index_copy_(0, index, updated.to(self.rows.dtype))


# ---------------------------------------------------------------------------------- negative sampling
class ClassIndex(nn.Module):
    """Buffers that make `exact` sampling a few tensor ops: rows sorted by class, each class's start and size."""

    def __init__(self, labels: torch.Tensor, num_classes: int = 0):
        super().__init__()
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        num_classes = max(num_classes, int(labels.max()) + 1 if labels.numel() else 0)
        counts = torch.bincount(labels[labels >= 0], minlength=num_classes)  # (C,)
        unlabeled = int((labels < 0).sum())
        # Unlabeled rows (-1) sort first, then class 0, 1, ...: class c occupies [start_c, start_c + n_c).
        starts = unlabeled + torch.cumsum(counts, 0) - counts  # (C,)
        self.register_buffer("row_labels", labels)  # (N,)
        self.register_buffer("rows_by_class", torch.argsort(labels, stable=True))  # (N,)
        self.register_buffer("class_start", starts)  # (C,)
        self.register_buffer("class_count", counts)  # (C,)
        # Candidate counts (N minus the skipped block), as plain ints so sampling never reads a buffer on the host.
        spans = [len(labels) - int(c) for c in counts if c > 0] + ([len(labels) - 1] if unlabeled else [])
        self.max_span = max(spans, default=len(labels) - 1)


def uniform_draws(batch_size: int, k: int, device, generator=None, rank: int = 0, world: int = 1) -> torch.Tensor:
    """(batch_size, k) float64 uniforms in [0, 1): this rank's slice of the draws for the global batch.

    Every rank draws the (world * batch_size, k) block from the same RNG stream and keeps rows
    [rank * b, (rank + 1) * b), so a run on `world` ranks draws exactly what one process would.
    """
    draws = torch.rand(world * batch_size, k, dtype=torch.float64, device=device, generator=generator)
    return draws[rank * batch_size:(rank + 1) * batch_size]


def _skipped_block(index: torch.Tensor, classes: Optional[ClassIndex]):
    """(start, count, labelled), each (B,): the block of sorted positions an anchor may not draw (its own row in
    `relax` and for unlabeled anchors, its class's rows in `exact`)."""
    if classes is None:
        return index, torch.ones_like(index), torch.zeros_like(index, dtype=torch.bool)
    label = classes.row_labels[index]  # (B,)
    labelled = label >= 0
    cls = label.clamp(min=0)
    skip_start = torch.where(labelled, classes.class_start[cls], index)  # (B,)
    skip_count = torch.where(labelled, classes.class_count[cls], torch.ones_like(index))  # (B,)
    return skip_start, skip_count, labelled


def _rows_at(draw: torch.Tensor, skipped, classes: Optional[ClassIndex]) -> torch.Tensor:
    """Candidate positions (B, K) in [0, span) -> memory rows, jumping over each anchor's skipped block."""
    skip_start, skip_count, labelled = skipped
    position = draw + skip_count[:, None] * (draw >= skip_start[:, None])  # (B, K)
    if classes is None:
        return position
    return torch.where(labelled[:, None], classes.rows_by_class[position], position)


def negatives_from_uniform(uniform: torch.Tensor, index: torch.Tensor, num_rows: int,
                           classes: Optional[ClassIndex] = None) -> torch.Tensor:
    """Map uniforms (B, K) in [0, 1) to negative rows (B, K), with replacement: `relax` if classes is None,
    else `exact`."""
    skipped = _skipped_block(index, classes)
    span = num_rows - skipped[1]  # (B,) rows an anchor may draw from
    draw = (uniform * span.to(torch.float64)[:, None]).long()  # (B, K) in [0, span)
    draw = torch.minimum(draw, (span - 1)[:, None])  # guard against float rounding up to span
    return _rows_at(draw, skipped, classes)


def negatives_from_keys(keys: torch.Tensor, index: torch.Tensor, num_rows: int, k: int,
                        classes: Optional[ClassIndex] = None) -> torch.Tensor:
    """K distinct negative rows per anchor (B, K) from random keys (B, S), S >= every anchor's candidate count:
    the candidates with the K smallest keys, a uniform K-subset (the reference's draw without replacement).

    An anchor with fewer than K candidates (S must then be >= K) gets each of them once, and its remaining draws
    are random columns past its span folded back into it (repeats), where the reference draws such an anchor
    with replacement."""
    skipped = _skipped_block(index, classes)
    span = num_rows - skipped[1]  # (B,)
    columns = torch.arange(keys.shape[1], device=keys.device)
    keys = torch.where(columns[None, :] >= span[:, None], keys + 2.0, keys)  # keys in [0, 1): candidates first
    draw = keys.topk(k, dim=1, largest=False, sorted=False).indices  # (B, K) distinct
    draw = torch.remainder(draw, span[:, None])  # changes only an overflow (span < K): folded into the span
    return _rows_at(draw, skipped, classes)


def negatives_from_seeds(seeds: torch.Tensor, index: torch.Tensor, num_rows: int, k: int,
                         classes: Optional[ClassIndex] = None) -> torch.Tensor:
    """K distinct negative rows per anchor (B, K), anchor b's drawn by numpy's `Generator.choice(span, K,
    replace=False)` (a uniform K-subset: the reference's own draw, np.random.choice without replacement) from a
    PCG64 generator seeded with seeds[b] (B,), so an anchor's rows depend on its seed and span only.

    An anchor with fewer than K candidates gets each of them once, then K - span i.i.d. repeats (the reference
    draws such an anchor with replacement)."""
    skipped = _skipped_block(index, classes)
    span = (num_rows - skipped[1]).tolist()  # host ints: this path runs on the CPU
    draw = np.empty((len(span), k), dtype=np.int64)
    for row, (seed, n) in enumerate(zip(seeds.tolist(), span, strict=True)):  # one seed per anchor
        rng = np.random.default_rng(seed)
        if n >= k:
            draw[row] = rng.choice(n, k, replace=False, shuffle=False)
        else:
            draw[row, :n] = rng.permutation(n)
            draw[row, n:] = rng.integers(0, n, k - n)
    return _rows_at(torch.from_numpy(draw).to(index.device), skipped, classes)


def sample_negatives(index: torch.Tensor, k: int, num_rows: int, classes: Optional[ClassIndex] = None,
                     generator=None, rank: int = 0, world: int = 1, replacement: bool = False,
                     method: Optional[str] = None) -> torch.Tensor:
    """K negative rows per anchor (B, K), on index's device: `relax` if classes is None, else `exact`; distinct
    per anchor (the reference) unless `replacement` (i.i.d. draws, O(B x K) instead of O(B x N)).

    Both draw the global batch's block from one RNG stream and keep this rank's rows (see uniform_draws).
    The distinct draw has two implementations of the same distribution (`method`; None: "seeds" on a CPU when the
    candidates are at least SEEDS_MIN_WIDTH wide, else "keys"): "seeds" (one seed per anchor from the stream,
    then numpy's choice without replacement, O(K) per anchor but a fixed cost per anchor: 3-6x faster on a CPU
    than keys at N 10,000-50,000, slower below about 3,000) and "keys" (random keys and topk: a few batched
    kernels of static shape, which a captured step on a device replays). They draw other rows from one seed."""
    batch = index.shape[0]
    if replacement:
        uniform = uniform_draws(batch, k, index.device, generator, rank, world)  # (B, K)
        return negatives_from_uniform(uniform, index, num_rows, classes)
    width = max(k, num_rows - 1 if classes is None else classes.max_span)
    method = method or ("seeds" if index.device.type == "cpu" and width >= SEEDS_MIN_WIDTH else "keys")
    check_choice("method", method, ("seeds", "keys"))
    if method == "seeds":
        seeds = torch.randint(0, 2**62, (world * batch,), generator=generator)  # the CPU stream, as any CPU draw
        return negatives_from_seeds(seeds[rank * batch:(rank + 1) * batch], index, num_rows, k, classes)
    keys = torch.rand(world * batch, width, device=index.device, generator=generator)
    return negatives_from_keys(keys[rank * batch:(rank + 1) * batch], index, num_rows, k, classes)


def sample_shared_negatives(k: int, num_rows: int, device, generator=None) -> torch.Tensor:
    """K rows (K,) uniform over all N rows, one set for the whole batch (masked per anchor by shared_negative_mask)."""
    uniform = torch.rand(k, dtype=torch.float64, device=device, generator=generator)
    return (uniform * num_rows).long().clamp_(max=num_rows - 1)


def shared_negative_mask(index: torch.Tensor, negatives: torch.Tensor,
                         classes: Optional[ClassIndex] = None) -> torch.Tensor:
    """(B, K) True where shared negative k is not one for anchor b: its own row, or (`exact`) a row of its class."""
    invalid = negatives[None, :] == index[:, None]  # (B, K)
    if classes is not None:
        label = classes.row_labels[index]  # (B,)
        same_class = classes.row_labels[negatives][None, :] == label[:, None]  # (B, K)
        invalid |= same_class & (label >= 0)[:, None]
    return invalid


# ------------------------------------------------------------------------- normalisation constant Z
def batch_log_partition(logits: torch.Tensor, num_rows: int) -> torch.Tensor:
    """log(mean(exp(s / tau)) * N) over the batch's (B, K+1) logits s / tau: the reference's estimate of log Z."""
    logits = logits.detach()
    return torch.logsumexp(logits.flatten(), 0) - math.log(logits.numel()) + math.log(num_rows)


class PartitionEstimate(nn.Module):
    """The NCE's normalisation constant Z, kept as log Z in a buffer (state_dict) and never back-propagated.

    `frozen` (default): Z is the first training batch's estimate, then fixed (the reference code).
    `ema` (option): initialised from the first batch, then log Z <- log(m Z + (1 - m) Z_batch) each training step,
    so Z follows the scores as the heads and memories learn (a frozen Z from random heads goes stale).
    Under DDP the batch estimate is averaged over ranks (equal batch sizes) so every rank keeps the same Z.
    """

    def __init__(self, z_estimate: str = "frozen", z_momentum: float = 0.99):
        super().__init__()
        self.z_estimate = z_estimate
        self.z_momentum = z_momentum
        self.register_buffer("log_z", torch.zeros((), dtype=torch.float64))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(self, batch_log_z: torch.Tensor, update: bool) -> torch.Tensor:
        """log Z to use for this batch, given its estimate; stores the new value when `update` (training)."""
        batch_log_z = batch_log_z.to(torch.float64)
        _, world = rank_and_world()
        if world > 1:  # log of the mean over ranks of Z_batch
            batch_log_z = torch.logsumexp(all_gather_concat(batch_log_z.reshape(1)), 0) - math.log(world)
        if self.z_estimate == "frozen":
            candidate = self.log_z
        else:
            m = self.z_momentum
            log_m = math.log(m) if m > 0 else -math.inf
            candidate = torch.logaddexp(self.log_z + log_m, batch_log_z + math.log1p(-m))
        log_z = torch.where(self.initialised, candidate, batch_log_z)  # first batch: its own estimate
        if update:
            self.log_z.copy_(log_z)
            self.initialised.fill_(True)
        return log_z


# ------------------------------------------------------------------------------------------- objective
def nce_loss(log_p: torch.Tensor, noise_ratio: float, invalid: Optional[torch.Tensor] = None,
             eps: float = 1e-7) -> torch.Tensor:
    """CRD's NCE loss, Eq. (18) of the paper: -(1/B) sum_b [log h(pos_b) + sum_k log(1 - h(neg_bk))].

    With P = exp(s / tau) / Z the model's probability of a row and noise_ratio = K / N (K noise samples from
    the uniform noise P_n = 1/N), the critic is h = P / (P + K/N + eps), as in the reference code. `log_p` is
    log P (B, K+1), positive first; `invalid` (B, K) drops masked (shared) negatives. Computed in log space so
    that a small tau cannot overflow exp(s / tau).
    """
    log_noise = math.log(noise_ratio + eps)
    # log h = log P - log(P + K/N + eps) and log(1 - h) = log(K/N) - log(P + K/N + eps), written with
    # logaddexp(a, b) = b + softplus(a - b), which stays finite for any score.
    log_h_positive = -F.softplus(log_noise - log_p[:, 0])  # (B,)
    log_not_h_negative = math.log(noise_ratio) - log_noise - F.softplus(log_p[:, 1:] - log_noise)  # (B, K)
    if invalid is not None:
        log_not_h_negative = log_not_h_negative.masked_fill(invalid, 0.0)
    return -(log_h_positive.sum() + log_not_h_negative.sum()) / log_p.shape[0]


def check_choice(key: str, value, choices: tuple) -> None:
    """Raise a one-line ConfigError unless `value` is one of `choices`."""
    if value not in choices:
        raise ConfigError(f"crd: {key}={value!r} is not one of {', '.join(map(repr, choices))}")
