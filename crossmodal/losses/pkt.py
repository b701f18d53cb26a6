"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), on the pooled embeddings.

With the cosine kernel K(a, b) = (cos(a, b) + 1) / 2, each network turns the batch into conditional
probabilities, one row per sample (eq. 8 and 11), and the loss is KL(P_t || P_s) averaged over
entries. The default is RepDistiller's (the authors' code): a row p_{.|j} = K(x_., x_j) / sum_k
K(x_k, x_j) keeps the sample itself (K = 1 on the diagonal), the vectors are scaled by
1 / (||x|| + eps), and the KL terms are averaged over all B^2 entries; `default_weight` 30000 is
tuned for that scale. `exclude_self=True` is the paper's p_{i|j}, whose sum runs over k != j: the
diagonal is dropped and the KL averaged over the B(B-1) pairs i != j (not the reference's setting).
Only the kernel is compared, so embedding sizes may differ.
"""
from __future__ import annotations

import torch

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


def cosine_conditional_probabilities(x: torch.Tensor, eps: float, exclude_self: bool = False) -> torch.Tensor:
    """Row-normalised cosine kernel between the rows of x (diagonal kept unless exclude_self): (B, D) -> (B, B)."""
    x = x.float().flatten(1)  # (B, D)
    unit = x / (x.norm(dim=1, keepdim=True) + eps)  # (B, D)
    with torch.autocast(unit.device.type, enabled=False):  # fp16/bf16 would erase kernel differences near 1
        kernel = (unit @ unit.t() + 1.0) / 2.0  # (B, B), in [0, 1]
    if exclude_self:  # a sample is not its own neighbour
        kernel = kernel * (1.0 - torch.eye(x.shape[0], device=x.device))
        return kernel / (kernel.sum(1, keepdim=True) + eps)
    return kernel / kernel.sum(1, keepdim=True)


@register_distiller("pkt")
class ProbabilisticKT(Distiller):
    """KL divergence between the teacher's and the student's cosine-kernel neighbour distributions."""

    default_weight = 30000.0

    def __init__(self, spec: DistillSpec, eps: float = 1e-7, exclude_self: bool = False):
        super().__init__(spec)
        if eps <= 0:
            raise ConfigError(f"loss 'pkt': eps must be > 0, got {eps}")
        self.eps, self.exclude_self = float(eps), bool(exclude_self)

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        p_s = cosine_conditional_probabilities(s_out["embedding"], self.eps, self.exclude_self)  # (B, B)
        p_t = cosine_conditional_probabilities(t_out["embedding"], self.eps, self.exclude_self)  # (B, B)
        n = p_s.shape[0]
        kl = p_t * torch.log((p_t + self.eps) / (p_s + self.eps))  # (B, B); 0 on the diagonal if exclude_self
        pairs = n * (n - 1) if self.exclude_self else n * n
        return kl.sum() / max(pairs, 1)
