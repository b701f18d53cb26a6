"""Similarity-preserving distillation (Tung & Mori, ICCV 2019), on the last stage map.

G = A A^T for the flattened (B, C*H*W) activations, each row L2-normalised; the loss is
||G_s - G_t||_F^2 / B^2 (paper, eq. 4). Only the batch-by-batch similarities are compared,
so channel counts and spatial sizes of student and teacher may differ freely.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.losses.base import Distiller, register_distiller


def batch_similarity(feature: torch.Tensor) -> torch.Tensor:
    """Row-normalised Gram matrix of a batch of feature maps: (B, ...) -> (B, B)."""
    flat = feature.float().flatten(1)  # (B, D)
    with torch.autocast(flat.device.type, enabled=False):  # fp16/bf16 products would erase small similarity differences
        return F.normalize(flat @ flat.t(), dim=1)  # (B, B)


@register_distiller("sp")
class SimilarityPreserving(Distiller):
    """||G_s - G_t||_F^2 / B^2 between the batch similarity matrices of the last stage."""

    default_weight = 3000.0

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        g_s = batch_similarity(s_out["features"][-1])  # (B, B)
        g_t = batch_similarity(t_out["features"][-1])  # (B, B)
        return (g_s - g_t).pow(2).sum() / g_s.shape[0] ** 2
