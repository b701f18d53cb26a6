"""Neuron selectivity transfer (Huang & Wang, 2017): match the distribution of neuron patterns.

Each channel's spatial map, flattened and L2-normalised, is one sample; the loss is the squared
MMD between the student's and the teacher's channels under the polynomial kernel
k(x, y) = (x . y)^2 (d = 2, c = 0, the paper's best; eq. 6 and 8), averaged over the batch and
summed over paired stages:

    mean k(t_i, t_j) + mean k(s_i, s_j) - 2 mean k(s_i, t_j)

Channel counts may differ (MMD compares sets); maps of different sizes are pooled to the smaller
one and stages paired as in crossmodal.losses.at.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.stages import last_stages, pool_to_smaller


def polynomial_mmd(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD with kernel (x.y)^2 between the normalised channels of two (B, C, H, W) maps."""
    s = F.normalize(f_s.float().flatten(2), dim=2)  # (B, C_s, H*W)
    t = F.normalize(f_t.float().flatten(2), dim=2)  # (B, C_t, H*W)
    with torch.autocast(s.device.type, enabled=False):  # MMD is a small difference of large terms: fp32
        k_tt = (t @ t.transpose(1, 2)).pow(2).mean()
        k_ss = (s @ s.transpose(1, 2)).pow(2).mean()
        k_st = (s @ t.transpose(1, 2)).pow(2).mean()
    return k_tt + k_ss - 2 * k_st


@register_distiller("nst")
class NeuronSelectivityTransfer(Distiller):
    """Sum over paired stages of the polynomial-kernel MMD between channel activation patterns."""

    default_weight = 50.0

    def __init__(self, spec: DistillSpec):
        super().__init__(spec)
        last_stages(spec.student.features, spec.teacher.features, "nst")  # fail at build time, not step 1

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        total = 0.0
        for f_s, f_t in last_stages(s_out["features"], t_out["features"], "nst"):
            total = total + polynomial_mmd(*pool_to_smaller(f_s, f_t))
        return total
