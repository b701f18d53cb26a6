"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on the pooled embeddings.

With the cosine kernel K(a, b) = (cos(a, b) + 1) / 2, each network defines conditional
probabilities p_{i|j} = K(x_i, x_j) / sum_{k != j} K(x_k, x_j) over the batch (eq. 8 and 11);
the loss is KL(P_t || P_s) summed over each row and averaged over the B(B-1) pairs (the
references average over entries, which sets the scale of `default_weight` 30000). Only the
kernel is compared, so embedding sizes may differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


def cosine_conditional_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-normalised cosine kernel between the rows of x with the diagonal excluded: (B, D) -> (B, B)."""
    unit = F.normalize(x.float().flatten(1), dim=1, eps=eps)  # (B, D)
    with torch.autocast(unit.device.type, enabled=False):  # fp16/bf16 would erase kernel differences near 1
        kernel = (unit @ unit.t() + 1.0) / 2.0  # (B, B), in [0, 1]
    kernel = kernel * (1.0 - torch.eye(x.shape[0], device=x.device))  # a sample is not its own neighbour
    return kernel / (kernel.sum(1, keepdim=True) + eps)


@register_distiller("pkt")
class ProbabilisticKT(Distiller):
    """KL divergence between the teacher's and the student's cosine-kernel neighbour distributions."""

    default_weight = 30000.0

    def __init__(self, spec: DistillSpec, eps: float = 1e-7):
        super().__init__(spec)
        if eps <= 0:
            raise ConfigError(f"loss 'pkt': eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        p_s = cosine_conditional_probabilities(s_out["embedding"], self.eps)  # (B, B)
        p_t = cosine_conditional_probabilities(t_out["embedding"], self.eps)  # (B, B)
        n = p_s.shape[0]
        kl = p_t * torch.log((p_t + self.eps) / (p_s + self.eps))  # (B, B), 0 on the diagonal
        return kl.sum() / max(n * (n - 1), 1)
