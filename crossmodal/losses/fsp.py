"""Flow of solution procedure (Yim et al., CVPR 2017): match how features flow between stages.

The FSP matrix between consecutive stage maps F1 (C1, H, W) and F2 (C2, H, W) is
G = F1 F2^T / (H W), shape (C1, C2) per sample (paper, eq. 1; the larger map is
adaptive-average-pooled to the smaller when their sizes differ). The loss is the mean squared
difference of student and teacher matrices, summed over the consecutive pairs of all stage maps,
stem included (eq. 2 with equal weights). The matrices are compared entry by entry, so both
networks need the same number of stage maps with the same channels (ConfigError otherwise).

As in the paper and the references this is an init stage (`init_epochs`, 30) training the
student itself (`init_trains_student`; the loss has no parameters of its own); afterwards
`forward` returns 0 unless `keep_after_init=True`.
"""
from __future__ import annotations

import torch

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.stages import pool_to_smaller


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """FSP matrix between two (B, C, H, W) maps: (B, C_bottom, C_top), spatially averaged products."""
    bottom, top = pool_to_smaller(bottom.float(), top.float())
    with torch.autocast(bottom.device.type, enabled=False):  # fp32 under AMP: the loss compares these entries
        return bottom.flatten(2) @ top.flatten(2).transpose(1, 2) / bottom[0, 0].numel()


@register_distiller("fsp")
class FlowOfSolutionProcedure(Distiller):
    """Sum over consecutive stage pairs of mean((G_s - G_t)^2) between FSP matrices, as an init stage."""

    default_weight = 50.0
    init_epochs = 30
    init_trains_student = True  # the only thing the init stage can train

    def __init__(self, spec: DistillSpec, init_epochs: int = 30, keep_after_init: bool = False):
        super().__init__(spec)
        s_channels = [shape[0] for shape in spec.student.features]
        t_channels = [shape[0] for shape in spec.teacher.features]
        if s_channels != t_channels or len(s_channels) < 2:
            raise ConfigError(
                f"loss 'fsp' compares FSP matrices entry by entry and needs >= 2 stage maps with the same "
                f"channels in both models; student has {s_channels}, teacher {t_channels} (use at, sp or crd instead)"
            )
        if init_epochs < 0:
            raise ConfigError(f"loss 'fsp': init_epochs must be >= 0, got {init_epochs}")
        self.init_epochs, self.keep_after_init = int(init_epochs), bool(keep_after_init)

    def init_loss(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        """FSP matching loss over consecutive stage pairs (stem included)."""
        f_s, f_t = s_out["features"], t_out["features"]
        total = 0.0
        for i in range(len(f_s) - 1):
            total = total + (fsp_matrix(f_s[i], f_s[i + 1]) - fsp_matrix(f_t[i], f_t[i + 1])).pow(2).mean()
        return total

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        if self.keep_after_init:
            return self.init_loss(s_out, t_out, batch)
        return s_out["logits"].new_zeros(())
