"""Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020), registered as the distiller "crd".

What is implemented (paper Sec. 3.1 and the reference code's behaviour):
- Heads g_S, g_T: Linear(embedding, feat_dim) + L2 norm on the student's and teacher's `embedding`.
- Two memories of N = spec.num_samples unit rows (student side, teacher side). The student's embedding of
  sample i is scored against the teacher memory and vice versa; the anchor's own row (batch["index"]) is
  its positive, K rows drawn by `mode` are its negatives, and the two terms are summed.
- The objective is the paper's NCE: with P = exp(g_T(t)'g_S(s) / tau) / Z and uniform noise over the N rows,
  the critic is h = P / (P + K/N) (the paper's h(T,S) with its N/M ratio = K/N here), and the loss is Eq. (18):
      L = -E_pos[log h] - K * E_neg[log(1 - h)]   (summed over the K negatives, averaged over anchors).
  (An InfoNCE option was removed: docs/DISTILLERS.md gives its measured effect.)
- Z, the normalisation constant of exp(s/tau): the default `z_estimate="frozen"` is the reference's
  Z = mean(exp(s/tau)) * N from the first training batch, kept forever (one Z per direction). The option
  `"ema"` starts there and then follows Z_batch with momentum `z_momentum` (see
  contrast_memory.PartitionEstimate): Z then tracks the scores as the heads learn instead of staying at its
  random-head value, which changes the effective weight of the positive against the negatives (the critic's
  P / (P + K/N) saturates differently); it is not the paper's algorithm, and `benchmarks/ablation.py` measures
  its effect (docs/DISTILLERS.md lists each switch's use and its ablation variant).
- `positive="memory"` (the reference's): the anchor's positive is its own row of the other side's memory, i.e.
  the other network's embedding of the sample from the last epoch it was seen in, and a random unit vector
  before its first visit. With `positive="batch"` the positive is the other side's embedding of the same sample
  in this batch (detached, like a memory row), as in the paper's critic h(T(x_i), S(x_i)); the negatives still
  come from the memory. They differ most in runs shorter than a few passes over the data (every first visit
  scores a random positive under "memory"); in the first CPU ablation (under one pass, withdrawn with its weak
  teacher: benchmarks/results/archive/2026-11-26-weak-teachers/) "batch" was worse than the reference's
  "memory", which stays the default.
- After the loss is computed (training mode only), the rows of the batch's samples move towards the new
  embeddings: row <- normalise(nce_m * row + (1 - nce_m) * embedding), without autograd.

Temperature: the paper's text gives tau = 0.1 for CIFAR and 0.07 for ImageNet; the reference code uses 0.07
everywhere, which is our default (`nce_t`).

Sampling (`mode`): "exact" draws negatives uniformly from rows of other classes (the reference's default);
"relax" draws uniformly from every row but the anchor's own, and needs no labels. Note that RepDistiller's
own "relax" differs (it also swaps the positive for a random same-class row); ours keeps the anchor's row.
In "exact", anchors whose training label is -1 (unlabeled) fall back to "relax".
Per anchor, the K negatives are distinct, drawn without replacement as the reference draws them: on a CPU by
numpy's choice without replacement (the reference's own draw), one PCG64 generator per anchor seeded from the
torch stream (O(K) per anchor); on a device by random keys over the candidates, the K smallest kept (O(B x N)
per step, batched kernels a captured step replays). Same distribution, other rows for the same seed
(contrast_memory.sample_negatives). `replacement=True` draws them i.i.d. with replacement instead (O(B x K):
the option for ImageNet-sized N, where B x N keys are 1.3 GB per step at batch 256; at K/N = 0.36, CIFAR's
setting, about 16 % of a sample's draws are then repeats).
`negatives="shared"` draws one set of K rows for the whole batch (uniform over all rows) and masks, per
anchor, its own row and (in "exact") its class's rows; the scores become one (B, D) x (D, K) matmul.
The NCE keeps the K/N noise ratio, so an "exact" anchor sees about K (1 - n_c / N) negatives.

Memory storage (`memory_dtype`): the two memories hold 2 x N x feat_dim numbers, 1.31 GB in float32 for
ImageNet's N = 1,281,167 rows at feat_dim 128 (the reference's storage, our default). "float16" or "bfloat16"
stores the rows in half precision (656 MB for both): the rows a step reads are converted to float32, the
scores, the loss and the momentum update are computed in float32, and the updated rows are rounded once when
written back. Each write moves a unit row by at most the half type's unit roundoff u in L2 norm (2^-11 for
float16, 2^-8 for bfloat16), and the next write scales an earlier error by m / |m row + (1 - m) embedding|,
so a row stays within a few u of the float32 run's and a score (a dot product with a unit anchor) within
that divided by tau; tests/test_crd.py derives this bound row by row and checks rows, Z and loss against the
float32 algorithm over 24 steps. float16 keeps 3 more mantissa bits than bfloat16 and unit rows never
approach its range limits: it is the one to use. This is an option, not the paper's algorithm.

Distributed (DDP): every rank draws the negatives for the global batch and keeps its slice, the memories are
updated with the embeddings and indices of all ranks (gathered in rank order), and Z estimates are averaged
over ranks, so every rank's state stays identical and equal to one process on the global batch. This assumes
the engine's sampler: equal per-rank batches, rank r holding slice [r*b, (r+1)*b), and a shared RNG stream.
The memories are kept identical by construction: DDP need not broadcast buffers (broadcast_buffers=False).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.distributed import all_gather_concat, rank_and_world
from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.contrast_memory import (
    ClassIndex,
    ContrastMemory,
    PartitionEstimate,
    batch_log_partition,
    check_choice,
    nce_loss,
    sample_negatives,
    sample_shared_negatives,
    shared_negative_mask,
)

MEMORY_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class EmbedHead(nn.Module):
    """Linear projection to feat_dim followed by L2 normalisation (the paper's g_S / g_T)."""

    def __init__(self, dim_in: int, feat_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim_in) or (B, ...) -> (B, feat_dim) unit vectors."""
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def _decimal_size(num_bytes: int) -> str:
    """'1.31 GB', '656 MB', '32.8 kB' (powers of 1000, 3 significant digits; a size that rounds up to 1000 of a
    unit is shown in the next one: 999,999,999 bytes is '1 GB', not '1e+03 MB')."""
    for unit, scale in (("kB", 1e3), ("MB", 1e6)):
        text = f"{num_bytes / scale:.3g}"
        if float(text) < 1000:
            return f"{text} {unit}"
    gb = num_bytes / 1e9
    return f"{gb:.3g} GB" if gb < 999.5 else f"{gb:,.0f} GB"


@register_distiller("crd")
class CRDLoss(Distiller):
    """CRD loss with its heads, memories and Z estimates (see the module docstring for the equations)."""

    default_weight = 0.8  # the reference scripts' beta for CRD (alongside ce 1, and kd 1 when combined)
    capturable = True  # sampling, scores, Z and the in-place memory update are device-only, of static shape

    def __init__(self, spec: DistillSpec, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5, mode: str = "exact", z_estimate: str = "frozen",
                 z_momentum: float = 0.99, negatives: str = "per_sample", positive: str = "memory",
                 memory_dtype: str = "float32", replacement: bool = False):
        super().__init__(spec)
        check_choice("mode", mode, ("exact", "relax"))
        check_choice("memory_dtype", memory_dtype, tuple(MEMORY_DTYPES))
        check_choice("z_estimate", z_estimate, ("ema", "frozen"))
        check_choice("negatives", negatives, ("per_sample", "shared"))
        check_choice("positive", positive, ("memory", "batch"))
        num_rows = int(spec.num_samples)
        if num_rows < 2:
            raise ConfigError(f"crd: the training split has {num_rows} sample(s); CRD needs at least 2")
        if int(nce_k) < 1 or int(feat_dim) < 1:
            raise ConfigError(f"crd: nce_k={nce_k} and feat_dim={feat_dim} must be positive integers")
        if not nce_t > 0:
            raise ConfigError(f"crd: nce_t={nce_t} must be > 0 (the reference uses 0.07)")
        if not 0 <= nce_m < 1 or not 0 <= z_momentum < 1:
            raise ConfigError(f"crd: nce_m={nce_m} and z_momentum={z_momentum} must be in [0, 1)")
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = int(feat_dim), int(nce_k), float(nce_t), float(nce_m)
        self.mode, self.negatives, self.positive = mode, negatives, positive
        self.num_rows, self.memory_dtype = num_rows, memory_dtype
        if not isinstance(replacement, bool):
            raise ConfigError(f"crd: replacement={replacement!r} must be true or false")
        self.replacement = replacement
        self.draw_method = None  # sample_negatives' `method` (None: by the device); benchmarks set it to compare

        self.embed_student = EmbedHead(spec.student.embedding, self.feat_dim)
        self.embed_teacher = EmbedHead(spec.teacher.embedding, self.feat_dim)
        dtype = MEMORY_DTYPES[memory_dtype]
        self.memory_student = ContrastMemory(num_rows, self.feat_dim, self.nce_m, dtype=dtype)
        self.memory_teacher = ContrastMemory(num_rows, self.feat_dim, self.nce_m, dtype=dtype)
        self.z_student_anchor = PartitionEstimate(z_estimate, z_momentum)
        self.z_teacher_anchor = PartitionEstimate(z_estimate, z_momentum)
        self.classes = self._class_index(spec) if mode == "exact" else None

    def check_training_split(self, num_samples: int) -> None:
        """A run needs fewer negatives per anchor than samples: at nce_k >= N every anchor sees only repeats."""
        if self.nce_k >= num_samples:
            raise ConfigError(f"loss_params.crd.nce_k={self.nce_k} is not below the {num_samples} samples of the "
                              f"training split; set it below {num_samples} (e.g. --set loss_params.crd.nce_k="
                              f"{max(1, num_samples // 2)})")

    def memory_bytes(self) -> int:
        """Bytes held by the two memory banks (2 x N x feat_dim x the stored dtype's size)."""
        return sum(m.rows.numel() * m.rows.element_size() for m in (self.memory_student, self.memory_teacher))

    def state_note(self) -> str:
        """One line for the run's log: the memories' size, e.g. 2 x 1,281,167 rows x 128 float32 = 1.31 GB."""
        hint = "; loss_params.crd.memory_dtype: float16 halves it" if self.memory_dtype == "float32" else ""
        return (f"crd: memories 2 x {self.num_rows:,} rows x {self.feat_dim} {self.memory_dtype} = "
                f"{_decimal_size(self.memory_bytes())}{hint}")

    def _class_index(self, spec: DistillSpec) -> ClassIndex:
        """Class buffers for `exact` sampling, checked against the memory size."""
        if spec.train_labels is None:
            raise ConfigError("crd: mode='exact' needs the training labels (spec.train_labels); "
                              "use mode='relax' for unlabeled data")
        labels = torch.as_tensor(spec.train_labels, dtype=torch.long).flatten()
        if labels.numel() != self.num_rows:
            raise ConfigError(f"crd: {labels.numel()} training labels for {self.num_rows} memory rows; they must match")
        classes = ClassIndex(labels, spec.num_classes)
        if classes.class_count.numel() and int(classes.class_count.max()) >= self.num_rows:
            raise ConfigError("crd: every training sample has the same class, so mode='exact' has no negatives; "
                              "use mode='relax'")
        return classes

    def draw_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """Negative rows for the anchors `index` (B,): (B, K) per sample, or (K,) shared by the batch."""
        if self.negatives == "shared":
            return sample_shared_negatives(self.nce_k, self.num_rows, index.device)
        rank, world = rank_and_world()
        return sample_negatives(index, self.nce_k, self.num_rows, self.classes, rank=rank, world=world,
                                replacement=self.replacement, method=self.draw_method)

    def forward(self, s_out: dict, t_out: dict, batch: dict, negatives: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scalar CRD loss for the batch; `negatives` (B, K) or (K,) overrides the sampling (tests, benchmarks)."""
        s_emb, t_emb = s_out["embedding"], t_out["embedding"]
        # Scores divided by tau = 0.07 and exponentiated need float32: keep the whole loss out of autocast.
        with torch.autocast(device_type=s_emb.device.type, enabled=False):
            f_s = self.embed_student(s_emb.float())  # (B, feat_dim)
            f_t = self.embed_teacher(t_emb.float())  # (B, feat_dim)
            index = batch["index"].to(device=f_s.device, dtype=torch.long)  # (B,)
            if negatives is None:
                negatives = self.draw_negatives(index)
            invalid = shared_negative_mask(index, negatives, self.classes) if negatives.dim() == 1 else None
            # Student anchors against the teacher memory, and teacher anchors against the student memory.
            loss_student = self._term(f_s, f_t, index, negatives, invalid, self.memory_teacher, self.z_student_anchor)
            loss_teacher = self._term(f_t, f_s, index, negatives, invalid, self.memory_student, self.z_teacher_anchor)
            if self.training:
                self._update_memories(index, f_s.detach(), f_t.detach())
        return loss_student + loss_teacher

    def _term(self, anchors, others, index, negatives, invalid, memory: ContrastMemory,
              z: PartitionEstimate) -> torch.Tensor:
        """One side's loss: anchors (B, D) scored against `memory`'s rows (and `others`, the other side's
        embeddings of the batch, as positives when positive="batch")."""
        scores = memory.score(anchors, index, negatives)  # (B, K+1), positive first
        if self.positive == "batch":
            fresh = (anchors * others.detach()).sum(dim=1, keepdim=True)  # (B, 1)
            scores = torch.cat([fresh, scores[:, 1:]], dim=1)
        logits = scores / self.nce_t
        log_z = z(batch_log_partition(logits, self.num_rows), update=self.training).to(logits.dtype)
        noise_ratio = (logits.shape[1] - 1) / self.num_rows  # K / N
        return nce_loss(logits - log_z, noise_ratio, invalid)

    @torch.no_grad()
    def _update_memories(self, index: torch.Tensor, f_s: torch.Tensor, f_t: torch.Tensor) -> None:
        """Momentum update of the batch's rows in both memories, with every rank's samples."""
        index, f_s, f_t = all_gather_concat(index), all_gather_concat(f_s), all_gather_concat(f_t)
        self.memory_student.update(index, f_s)
        self.memory_teacher.update(index, f_t)

    def extra_repr(self) -> str:
        """Key settings, shown by print(module)."""
        return (f"num_rows={self.num_rows}, feat_dim={self.feat_dim}, nce_k={self.nce_k}, nce_t={self.nce_t}, "
                f"nce_m={self.nce_m}, mode={self.mode!r}, negatives={self.negatives!r}, "
                f"positive={self.positive!r}, memory_dtype={self.memory_dtype!r}, replacement={self.replacement}")
