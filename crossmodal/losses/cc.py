"""Correlation congruence (Peng et al., ICCV 2019), on the pooled embeddings.

Student and teacher embeddings pass through their own linear head + L2 normalisation (a shared
`feat_dim` space, 128 by default, as in the references; the teacher's head is trainable, the
teacher is not). The correlation between samples is the Gaussian RBF kernel
exp(-gamma ||x - y||^2), which for unit vectors equals exp(-2 gamma) exp(2 gamma x.y) and is
approximated by its Taylor series of order P (paper, eq. 9):

    k(x, y) ~= sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (x . y)^p

The loss is ||psi_s - psi_t||_F^2 / B^2 over the (B, B) correlation matrices (eq. 6), with the
paper's P = 2 and gamma = 0.4. (The RepDistiller script uses a simpler stand-in whose weight,
0.02, is kept as `default_weight`; on this form it makes the term small: the unweighted loss is
~5e-5 at initialisation for resnet32x4 -> resnet8x4, so consider a larger weight.)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


class NormalizedLinear(nn.Module):
    """Linear projection followed by L2 normalisation: (B, D_in) -> (B, D_out) unit vectors."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def rbf_correlation(z: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Order-P Taylor approximation of the Gaussian RBF kernel between unit rows of z: (B, D) -> (B, B)."""
    z = z.float()
    with torch.autocast(z.device.type, enabled=False):  # cosines near 1 would lose their differences in fp16/bf16
        cosine = z @ z.t()  # (B, B)
    correlation = torch.zeros_like(cosine)
    for p in range(order + 1):
        coefficient = math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p)
        correlation = correlation + coefficient * cosine.pow(p)
    return correlation


@register_distiller("cc")
class CorrelationCongruence(Distiller):
    """||psi(head_s(e_s)) - psi(head_t(e_t))||_F^2 / B^2 with psi the Taylor-RBF correlation."""

    default_weight = 0.02

    def __init__(self, spec: DistillSpec, feat_dim: int = 128, gamma: float = 0.4, order: int = 2):
        super().__init__(spec)
        if feat_dim < 1 or gamma <= 0 or order < 0:
            raise ConfigError(
                f"loss 'cc': need feat_dim >= 1, gamma > 0 and order >= 0 (got {feat_dim}, {gamma}, {order})"
            )
        self.gamma, self.order = float(gamma), int(order)
        self.student_head = NormalizedLinear(spec.student.embedding, feat_dim)
        self.teacher_head = NormalizedLinear(spec.teacher.embedding, feat_dim)

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        psi_s = rbf_correlation(self.student_head(s_out["embedding"]), self.gamma, self.order)  # (B, B)
        psi_t = rbf_correlation(self.teacher_head(t_out["embedding"]), self.gamma, self.order)  # (B, B)
        return F.mse_loss(psi_s, psi_t)
