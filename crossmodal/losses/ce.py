"""Cross-entropy on the student's logits: the supervised term of every run.

Samples labelled -1 (no label, e.g. STL-10's unlabeled split) are ignored, and a batch with no
labelled sample contributes 0 rather than NaN. Weights in the reference scripts: ce 0.1 with
kd 0.9 for plain KD; ce 1 with every other method, CRD+KD included (ce 1, kd 1, crd 0.8).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


@register_distiller("ce")
class CrossEntropy(Distiller):
    """Mean cross-entropy over the labelled samples of the batch (optional label smoothing)."""

    needs_teacher = False
    trains_logits = True
    capturable = True
    default_weight = 1.0

    def __init__(self, spec: DistillSpec, label_smoothing: float = 0.0):
        super().__init__(spec)
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss 'ce': label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, s_out: dict, t_out, batch: dict) -> torch.Tensor:
        logits = s_out["logits"]  # (B, n)
        labels = batch["label"].to(logits.device)  # (B,), -1 = none
        # Sum then divide by the labelled count (not reduction="mean"): an all-unlabelled batch
        # gives 0 instead of 0/0, without a host sync to test for it.
        total = F.cross_entropy(
            logits.float(), labels, ignore_index=-1, reduction="sum", label_smoothing=self.label_smoothing
        )
        return total / (labels >= 0).sum().clamp(min=1)
