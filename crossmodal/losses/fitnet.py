"""FitNets hints (Romero et al., ICLR 2015): regress the teacher's hint layer from the student's.

The student's `features[hint_layer]` goes through a convolutional regressor (conv + BN + ReLU;
the ReLU because the teacher's stage outputs are post-activation) to the teacher's
`features[hint_layer]` shape, and the loss is the mean squared error. Index 2 (the second stage
after the stem) is the references' "middle layer" hint.

Regressor for student (C_s, H_s, W_s) -> teacher (C_t, H_t, W_t), as in the paper's
"convolutional regressor" whose kernel makes the shapes meet:
  same size -> 1x1 conv;  student twice as large -> 3x3 conv, stride 2;
  student larger otherwise -> "valid" conv with kernel (H_s - H_t + 1, W_s - W_t + 1);
  student half the size -> 4x4 transposed conv, stride 2;  any other smaller size -> ConfigError.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


def regressor_conv(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int]) -> Optional[nn.Module]:
    """The conv (or transposed conv) taking a (C_s, H_s, W_s) map to (C_t, H_t, W_t), or None if no rule fits."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = s_shape, t_shape
    if (h_s, w_s) == (h_t, w_t):
        return nn.Conv2d(c_s, c_t, kernel_size=1)
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        return nn.Conv2d(c_s, c_t, kernel_size=3, stride=2, padding=1)
    if h_s >= h_t and w_s >= w_t:
        return nn.Conv2d(c_s, c_t, kernel_size=(h_s - h_t + 1, w_s - w_t + 1))
    if (2 * h_s, 2 * w_s) == (h_t, w_t):
        return nn.ConvTranspose2d(c_s, c_t, kernel_size=4, stride=2, padding=1)
    return None


def hint_regressor(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int]) -> nn.Sequential:
    """Conv (or transposed conv) + BN + ReLU mapping a (C_s, H_s, W_s) map to (C_t, H_t, W_t)."""
    conv = regressor_conv(s_shape, t_shape)
    if conv is None:
        raise ConfigError(
            f"loss 'fitnet': cannot regress a {s_shape[1]}x{s_shape[2]} student hint to a "
            f"{t_shape[1]}x{t_shape[2]} teacher hint; choose a hint_layer where the student map is at least "
            "as large or exactly half the size"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(t_shape[0]), nn.ReLU(inplace=True))


@register_distiller("fitnet")
class FitNet(Distiller):
    """MSE between regressor(student features[hint_layer]) and teacher features[hint_layer]."""

    default_weight = 100.0

    def __init__(self, spec: DistillSpec, hint_layer: int = 2):
        super().__init__(spec)
        n = min(len(spec.student.features), len(spec.teacher.features))
        if not -n <= hint_layer < n:
            raise ConfigError(
                f"loss 'fitnet': hint_layer {hint_layer} is out of range; the models have "
                f"{len(spec.student.features)} (student) and {len(spec.teacher.features)} (teacher) feature maps"
            )
        self.hint_layer = hint_layer
        self.regressor = hint_regressor(spec.student.features[hint_layer], spec.teacher.features[hint_layer])

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        hint = t_out["features"][self.hint_layer]  # (B, C_t, H_t, W_t)
        guess = self.regressor(s_out["features"][self.hint_layer])  # (B, C_t, H_t, W_t)
        return F.mse_loss(guess.float(), hint.float())
