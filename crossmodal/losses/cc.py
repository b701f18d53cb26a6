"""Correlation congruence (Peng et al., ICCV 2019), on the pooled embeddings.

Student and teacher embeddings pass through their own linear head to a shared `feat_dim` space
(128, as in the references; the teacher's head is trainable, the teacher is not). Two forms:

- `correlation="consecutive"` (default, RepDistiller's, whose code credits it to the paper's
  authors): linear heads without normalisation; with d_i = |head_s(s_i) - head_t(t_i)| (element-wise),
  the loss is the mean over consecutive samples of the batch of d_i . d_{i+1}:

      L = 1 / (B - 1) * sum_{i < B-1} sum_c d_{i,c} d_{i+1,c}

  `default_weight` 0.02 is the reference scripts' beta for this form.
- `correlation="gaussian"` (the paper's, not the reference's setting): heads followed by L2
  normalisation; the correlation between samples is the Gaussian RBF kernel exp(-gamma ||x - y||^2),
  which for unit vectors equals exp(-2 gamma) exp(2 gamma x.y), approximated by its Taylor series of
  order P (eq. 9):

      k(x, y) ~= sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (x . y)^p

  and the loss is ||psi_s - psi_t||_F^2 / B^2 over the (B, B) correlation matrices (eq. 6), with the
  paper's P = 2 and gamma = 0.4. The 0.02 weight was not tuned for it (the unweighted loss is ~5e-5
  at initialisation for resnet32x4 -> resnet8x4), so give it a weight of its own.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


class LinearHead(nn.Module):
    """Linear projection, optionally followed by L2 normalisation: (B, D_in) -> (B, D_out)."""

    def __init__(self, dim_in: int, dim_out: int, normalize: bool):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        return F.normalize(z, dim=1) if self.normalize else z


def consecutive_correlation_loss(z_s: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """Mean over i of |z_s - z_t|_i . |z_s - z_t|_{i+1} for consecutive rows of (B, D) embeddings."""
    delta = (z_s.float() - z_t.float()).abs()  # (B, D)
    return (delta[:-1] * delta[1:]).sum(1).mean()


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
    """Correlation congruence between the heads' embeddings: RepDistiller's form, or the paper's Taylor-RBF one."""

    default_weight = 0.02

    def __init__(self, spec: DistillSpec, feat_dim: int = 128, correlation: str = "consecutive",
                 gamma: float = 0.4, order: int = 2):
        super().__init__(spec)
        if correlation not in ("consecutive", "gaussian"):
            raise ConfigError(f"loss 'cc': correlation={correlation!r} is not one of 'consecutive', 'gaussian'")
        if feat_dim < 1 or gamma <= 0 or order < 0:
            raise ConfigError(
                f"loss 'cc': need feat_dim >= 1, gamma > 0 and order >= 0 (got {feat_dim}, {gamma}, {order})"
            )
        self.correlation, self.gamma, self.order = correlation, float(gamma), int(order)
        normalize = correlation == "gaussian"  # the Taylor form assumes unit vectors
        self.student_head = LinearHead(spec.student.embedding, feat_dim, normalize)
        self.teacher_head = LinearHead(spec.teacher.embedding, feat_dim, normalize)

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        z_s = self.student_head(s_out["embedding"])  # (B, feat_dim)
        z_t = self.teacher_head(t_out["embedding"])  # (B, feat_dim)
        if self.correlation == "consecutive":
            return consecutive_correlation_loss(z_s, z_t)
        psi_s = rbf_correlation(z_s, self.gamma, self.order)  # (B, B)
        psi_t = rbf_correlation(z_t, self.gamma, self.order)  # (B, B)
        return F.mse_loss(psi_s, psi_t)
