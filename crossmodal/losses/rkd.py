"""Relational knowledge distillation (Park et al., CVPR 2019), on the pooled embeddings.

Distance-wise: pairwise Euclidean distances, each divided by their mean over pairs i != j
(eq. 5), compared with the Huber (smooth L1) loss. Angle-wise: cosines of the angles
<e_ij, e_kj> with e_ij = (x_i - x_j) / ||x_i - x_j|| over all triplets (eq. 7), Huber loss.
The weights inside (distance 25, angle 50) are the paper's and the references'; the outer
`default_weight` is 1. Only relations are compared, so embedding sizes may differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows of x: (B, D) -> (B, B), exact zeros on the diagonal."""
    x = x.float()
    squared_norms = x.pow(2).sum(1)  # (B,)
    with torch.autocast(x.device.type, enabled=False):  # |a|^2 + |b|^2 - 2ab cancels; fp16/bf16 cannot afford it
        gram = x @ x.t()  # (B, B)
    squared = (squared_norms[:, None] + squared_norms[None, :] - 2 * gram).clamp(min=eps)  # (B, B)
    off_diagonal = 1.0 - torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    return squared.sqrt() * off_diagonal  # clamp keeps sqrt's gradient finite on the diagonal


def normalized_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise distances divided by their mean over the B(B-1) pairs i != j: (B, D) -> (B, B)."""
    d = pairwise_distances(x)  # (B, B)
    n = x.shape[0]
    return d / (d.sum() / (n * (n - 1))).clamp(min=1e-12)


def triplet_cosines(x: torch.Tensor) -> torch.Tensor:
    """cos of the angle at x_j between x_i and x_k for all (i, j, k): (B, D) -> (B, B, B)."""
    x = x.float()
    directions = F.normalize(x[None, :, :] - x[:, None, :], dim=2)  # (B, B, D): [j, i] = unit(x_i - x_j)
    with torch.autocast(x.device.type, enabled=False):  # keep the cosines in fp32 under AMP
        return directions @ directions.transpose(1, 2)  # (B, B, B): [j, i, k]


@register_distiller("rkd")
class RelationalKD(Distiller):
    """distance_weight * Huber(distance relations) + angle_weight * Huber(angle relations)."""

    default_weight = 1.0

    def __init__(self, spec: DistillSpec, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__(spec)
        if distance_weight < 0 or angle_weight < 0:
            raise ConfigError(f"loss 'rkd': weights must be >= 0 (got {distance_weight}, {angle_weight})")
        self.distance_weight, self.angle_weight = float(distance_weight), float(angle_weight)

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        e_s = s_out["embedding"].float().flatten(1)  # (B, D_s)
        e_t = t_out["embedding"].float().flatten(1)  # (B, D_t)
        distance = F.smooth_l1_loss(normalized_distances(e_s), normalized_distances(e_t))
        angle = F.smooth_l1_loss(triplet_cosines(e_s), triplet_cosines(e_t))
        return self.distance_weight * distance + self.angle_weight * angle
