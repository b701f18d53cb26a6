"""Knowledge distillation (Hinton, Vinyals, Dean 2015): match the teacher's softened probabilities.

    L_KD = T^2 * KL( mean_k softmax(z_t^k / T) || softmax(z_s / T) )

averaged over the batch; T^2 keeps the gradient scale independent of T (paper, section 2).
With several teachers (`combines_teachers`), their softened probabilities are averaged first,
so an ensemble is distilled as one soft target rather than as a sum of competing ones.

Weights in the reference scripts: ce 0.1 / kd 0.9 for plain KD (hence `default_weight` 0.9),
and ce 1 / kd 1 / crd 0.8 when KD is added to CRD.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import DistillSpec, Distiller, register_distiller


def soft_target_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_probs || softmax(student_logits / T)), averaged over the batch."""
    s_log_probs = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, n)
    return F.kl_div(s_log_probs, teacher_probs, reduction="batchmean") * temperature**2


@register_distiller("kd")
class KnowledgeDistillation(Distiller):
    """Hinton's KD at temperature T; averages the probabilities of several teachers."""

    combines_teachers = True
    trains_logits = True
    capturable = True
    default_weight = 0.9

    def __init__(self, spec: DistillSpec, temperature: float = 4.0):
        super().__init__(spec)
        if temperature <= 0:
            raise ConfigError(f"loss 'kd': temperature must be > 0, got {temperature}")
        if spec is not None:
            self.check_spec(spec)
        self.temperature = float(temperature)

    @classmethod
    def check_spec(cls, spec: DistillSpec) -> None:
        """KD compares class probabilities: the teacher must predict the student's number of classes."""
        if spec.student.num_classes != spec.teacher.num_classes:
            raise ConfigError(f"loss 'kd': the teacher predicts {spec.teacher.num_classes} classes, the student "
                              f"{spec.student.num_classes}; KD needs the same classes (use crd, which compares embeddings)")

    def teacher_probs(self, t_out) -> torch.Tensor:
        """Softened class probabilities of one teacher output or the average over a list of them."""
        teachers = [t_out] if isinstance(t_out, dict) else list(t_out)
        probs = [F.softmax(t["logits"].float() / self.temperature, dim=1) for t in teachers]  # k x (B, n)
        return torch.stack(probs).mean(0)  # (B, n)

    def forward(self, s_out: dict, t_out, batch: dict) -> torch.Tensor:
        return soft_target_kl(s_out["logits"], self.teacher_probs(t_out), self.temperature)
