"""Variational information distillation (Ahn et al., CVPR 2019).

For each paired stage, a small 1x1-conv network (three convs without bias, ReLUs between, as in
the authors' and RepDistiller's code) predicts the mean mu(s) of a Gaussian over the teacher's
activations with one learned variance per teacher channel, sigma_c^2 = softplus(alpha_c) + eps;
the loss is the negative log-likelihood (paper, eq. 6, the constant dropped), averaged over
elements and summed over stages:

    0.5 * ( (t - mu(s))^2 / sigma_c^2 + log sigma_c^2 )

sigma^2 starts at `init_pred_var` (5.0 in the authors' setup). Stages are paired and maps of
different sizes pooled to the smaller one as in crossmodal.losses.at.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.stages import last_stages, pool_to_smaller


class GaussianRegressor(nn.Module):
    """Predicts the mean of the teacher's stage from the student's, with a per-channel variance."""

    def __init__(self, s_channels: int, t_channels: int, init_pred_var: float, eps: float):
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(t_channels, t_channels, 1, bias=False),
        )
        self.eps = eps
        # Inverse softplus, so that the initial variance is exactly init_pred_var.
        self.alpha = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_pred_var - eps))))

    def negative_log_likelihood(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian NLL (without the log 2 pi constant) of teacher map f_t given student map f_s."""
        mu = self.mean(f_s).float()  # (B, C_t, H, W)
        variance = (F.softplus(self.alpha) + self.eps).view(1, -1, 1, 1)  # (1, C_t, 1, 1)
        return 0.5 * ((f_t.float() - mu).pow(2) / variance + variance.log()).mean()


@register_distiller("vid")
class VariationalInformationDistillation(Distiller):
    """Sum over paired stages of the Gaussian NLL of the teacher's map given the student's."""

    default_weight = 1.0

    def __init__(self, spec: DistillSpec, init_pred_var: float = 5.0, eps: float = 1e-5):
        super().__init__(spec)
        if init_pred_var <= eps or eps <= 0:
            raise ConfigError(f"loss 'vid': need init_pred_var > eps > 0 (got {init_pred_var}, {eps})")
        pairs = last_stages(spec.student.features, spec.teacher.features, "vid")
        self.regressors = nn.ModuleList(
            GaussianRegressor(s[0], t[0], init_pred_var, eps) for s, t in pairs
        )

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        total = 0.0
        pairs = last_stages(s_out["features"], t_out["features"], "vid")
        for regressor, (f_s, f_t) in zip(self.regressors, pairs):
            f_s, f_t = pool_to_smaller(f_s, f_t)
            total = total + regressor.negative_log_likelihood(f_s, f_t)
        return total
