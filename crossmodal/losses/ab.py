"""Activation boundaries (Heo et al., AAAI 2019): transfer which neurons fire, in an init stage.

A connector maps each paired student stage *before its last ReLU* (`preact_features`) to the
teacher's: identity when the shapes already match, else, as in RepDistiller, FitNet's regressor
conv (crossmodal.losses.fitnet.regressor_conv: 1x1 for equal sizes, strided or transposed for a
factor of 2) + BN, without its ReLU. The loss is the paper's squared hinge around the teacher's
activation boundary with margin mu (eq. 5):

    rho(t) * relu(mu - s)^2 + (1 - rho(t)) * relu(mu + s)^2,   rho(t) = [t > 0]

summed over elements, divided by the batch size, weighted 2^(i - n + 1) over the n paired stages
(the deepest counts most) and scaled by 3e-3, as in the reference scripts, whose init-stage
learning rate was tuned for that scale. Stages are paired as in crossmodal.losses.at.

As in the paper and the references, the transfer happens in an init stage (`init_epochs`, 30)
that trains the connectors *and the student* (`init_trains_student`); afterwards `forward`
returns 0 and training continues with the other losses (ce, kd, ...), unless
`keep_after_init=True` keeps the boundary loss as an ordinary term.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller
from crossmodal.losses.fitnet import regressor_conv
from crossmodal.losses.stages import last_stages

REFERENCE_SCALE = 3e-3


def boundary_loss(source: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Sum of the squared hinge pushing `source` to the side of zero where `target` is, beyond `margin`."""
    source, active = source.float(), target > 0
    wrong_side = torch.where(active, (margin - source).clamp(min=0), (margin + source).clamp(min=0))
    return wrong_side.pow(2).sum()


def connector(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> nn.Module:
    """Regressor conv + BN from a student stage's shape to the teacher's (identity when they already agree)."""
    if s_shape == t_shape:
        return nn.Identity()
    conv = regressor_conv(s_shape, t_shape)
    if conv is None:
        raise ConfigError(f"loss 'ab': cannot connect a {s_shape[1]}x{s_shape[2]} student stage to a "
                          f"{t_shape[1]}x{t_shape[2]} teacher stage; the student map must be at least as large "
                          "or exactly half the size")
    return nn.Sequential(conv, nn.BatchNorm2d(t_shape[0]))


@register_distiller("ab")
class ActivationBoundaries(Distiller):
    """Activation-boundary transfer on pre-activation stage maps, trained in the init stage."""

    default_weight = 1.0
    init_epochs = 30
    init_trains_student = True  # the init stage optimises the student's layers with the connectors

    def __init__(self, spec: DistillSpec, margin: float = 1.0, init_epochs: int = 30, keep_after_init: bool = False):
        super().__init__(spec)
        if margin < 0 or init_epochs < 0:
            raise ConfigError(f"loss 'ab': need margin >= 0 and init_epochs >= 0 (got {margin}, {init_epochs})")
        self.margin, self.init_epochs, self.keep_after_init = float(margin), int(init_epochs), bool(keep_after_init)
        pairs = last_stages(spec.student.preact_features, spec.teacher.preact_features, "ab")
        self.connectors = nn.ModuleList(connector(s, t) for s, t in pairs)
        self.stage_weights = [2.0 ** (i - len(pairs) + 1) for i in range(len(pairs))]

    def init_parameters(self):
        """The connectors (the engine adds the student's parameters, see `init_trains_student`)."""
        return list(self.connectors.parameters())

    def init_loss(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        """Weighted activation-boundary loss over the paired pre-activation stages."""
        pairs = last_stages(s_out["preact_features"], t_out["preact_features"], "ab")
        total = 0.0
        for weight, connect, (f_s, f_t) in zip(self.stage_weights, self.connectors, pairs):
            total = total + weight * boundary_loss(connect(f_s), f_t, self.margin) / f_s.shape[0]
        return total * REFERENCE_SCALE

    def forward(self, s_out: dict, t_out: dict, batch: dict) -> torch.Tensor:
        if self.keep_after_init:
            return self.init_loss(s_out, t_out, batch)
        return s_out["logits"].new_zeros(())
