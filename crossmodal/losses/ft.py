"""Factor transfer (Kim, Park, Kwak, NeurIPS 2018): transfer a compressed "factor" of the teacher.

A paraphraser (3 convs down to rate * C_t channels, 3 transposed convs back) is trained in an
init stage (`init_epochs`, 30) to reconstruct the teacher's last stage map (MSE); it trains
nothing else. Then a translator (3 convs with BN) maps the student's last stage to a factor of
the same width, and the loss is the paper's p = 1 distance between L2-normalised factors
(eq. 3), the mean absolute difference of the two unit vectors:

    mean | phi(F_t) / ||phi(F_t)||_2 - phi(F_s) / ||phi(F_s)||_2 |

With the default `factor_form="attention"` (RepDistiller's), phi(F) is the factor's spatial map
of channel-averaged squares, mean_c F_c^2, as in attention transfer; `factor_form="flat"` (the
paper's eq. 3 and the FT authors' code, not the reference's setting) uses the whole flattened
factor. `default_weight` 200 is RepDistiller's beta, set for the attention form.
When the two factors differ in spatial size the larger is pooled to the smaller. The teacher's
factor is computed without gradients, so the paraphraser stays fixed after its init stage.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.stages import pool_to_smaller


def conv_block(c_in: int, c_out: int, batch_norm: bool, transposed: bool = False) -> list[nn.Module]:
    """3x3 (transposed) conv, optional BN and LeakyReLU(0.1), the paraphraser's/translator's unit."""
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, 3, padding=1)
    return [conv, *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.LeakyReLU(0.1, inplace=True)]


class Paraphraser(nn.Module):
    """Autoencoder on the teacher's last stage map; its encoder output is the teacher's factor."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, f = channels, factor_channels
        self.encoder = nn.Sequential(*conv_block(c, c, False), *conv_block(c, f, False), *conv_block(f, f, False))
        self.decoder = nn.Sequential(
            *conv_block(f, f, False, True), *conv_block(f, c, False, True), *conv_block(c, c, False, True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def normalized_factor(factor: torch.Tensor, form: str = "attention") -> torch.Tensor:
    """A (B, C, H, W) factor as one unit vector per sample: its map mean_c F^2 (B, H*W), or flat (B, C*H*W)."""
    factor = factor.float()
    if form == "attention":
        factor = factor.pow(2).mean(1)  # (B, H, W)
    return F.normalize(factor.flatten(1), dim=1)


@register_distiller("ft")
class FactorTransfer(Distiller):
    """L1 distance between the student's translated factor and the teacher's paraphrased factor."""

    default_weight = 200.0
    init_epochs = 30
    init_trains_student = False  # the init stage trains the paraphraser only
    # RepDistiller trains the paraphraser at lr 0.01 for its CIFAR resnet and WRN students (else at the run's lr).
    REFERENCE_INIT_LR, REFERENCE_INIT_LR_ARCHS = 0.01, ("resnet", "wrn_")

    def reference_init_lr(self, student_arch: str, lr: float) -> float:
        """0.01 for the CIFAR resnet*/wrn_* students (RepDistiller's paraphraser lr for them), else `lr`."""
        return self.REFERENCE_INIT_LR if student_arch.startswith(self.REFERENCE_INIT_LR_ARCHS) else lr

    def __init__(self, spec: DistillSpec, rate: float = 0.5, init_epochs: int = 30, factor_form: str = "attention"):
        super().__init__(spec)
        if factor_form not in ("attention", "flat"):
            raise ConfigError(f"loss 'ft': factor_form={factor_form!r} is not one of 'attention', 'flat'")
        self.factor_form = factor_form
        c_s, c_t = spec.student.features[-1][0], spec.teacher.features[-1][0]
        factor_channels = int(c_t * rate)
        if factor_channels < 1 or init_epochs < 0:
            raise ConfigError(
                f"loss 'ft': rate {rate} leaves {factor_channels} factor channels of the teacher's {c_t}, "
                f"and init_epochs ({init_epochs}) must be >= 0"
            )
        self.init_epochs = int(init_epochs)
        self.paraphraser = Paraphraser(c_t, factor_channels)
        self.translator = nn.Sequential(
            *conv_block(c_s, c_s, True), *conv_block(c_s, factor_channels, True),
            *conv_block(factor_channels, factor_channels, True),
        )

    def init_parameters(self):
        """The paraphraser, trained to reconstruct the teacher's last stage."""
        return list(self.paraphraser.parameters())

    def init_loss(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        """Reconstruction MSE of the teacher's last stage map through the paraphraser."""
        f_t = t_out["features"][-1].detach()  # (B, C_t, H, W)
        return F.mse_loss(self.paraphraser(f_t).float(), f_t.float())

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(t_out["features"][-1])  # (B, F, H_t, W_t)
        factor_s = self.translator(s_out["features"][-1])  # (B, F, H_s, W_s)
        factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
        return F.l1_loss(normalized_factor(factor_s, self.factor_form), normalized_factor(factor_t, self.factor_form))
