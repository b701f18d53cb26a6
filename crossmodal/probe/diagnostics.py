"""How close a student is to its teacher: logit-correlation difference (CRD Fig. 2) and linear CKA.

Correlation difference (Tian et al. 2020, Figure 2): for each network, the C x C Pearson
correlation matrix of its class logits across the test samples (class i's logit against class
j's); the figure shows |corr_teacher - corr_student| and its mean. A student that captured the
teacher's inter-class structure has a small difference.

Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited",
eq. for the linear kernel): with X (N, D1) and Y (N, D2) column-centred,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling
of either side (not to arbitrary invertible linear maps), and near 0 for independent features
when N is large relative to the dimensions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from crossmodal.errors import ConfigError


def logit_correlation(logits: torch.Tensor) -> torch.Tensor:
    """(C, C) Pearson correlation between classes of logits (N, C) across samples (constant classes -> 0)."""
    x = logits.double()
    x = x - x.mean(dim=0, keepdim=True)
    norm = x.norm(dim=0)  # (C,)
    x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    return x.T @ x  # (C, C)


def correlation_difference(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """(C, C) |corr_teacher - corr_student| of logits (N, C) of the same N samples."""
    if teacher_logits.shape != student_logits.shape:
        raise ConfigError(f"teacher logits {tuple(teacher_logits.shape)} and student logits "
                          f"{tuple(student_logits.shape)} differ; compare networks of the same classes on the same "
                          "data")
    return (logit_correlation(teacher_logits) - logit_correlation(student_logits)).abs()


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA in [0, 1] between representations x (N, D1) and y (N, D2) of the same N samples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    x = x.double().flatten(1)
    y = y.double().flatten(1)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    # The feature-space form: D x D products, cheaper than N x N Gram matrices when N >> D.
    cross = (y.T @ x).square().sum()
    norm = (x.T @ x).norm() * (y.T @ y).norm()
    return (cross / norm).item() if norm > 0 else 0.0


def plot_correlation_difference(diff: torch.Tensor, path: str | Path, class_names: Optional[Sequence[str]] = None,
                                title: str = "") -> Path:
    """Heatmap PNG of a (C, C) correlation difference (matplotlib Agg), written atomically."""
    from matplotlib.figure import Figure

    from crossmodal.probe.report import save_figure

    c = diff.shape[0]
    side = min(10.0, 3.0 + 0.35 * c)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(diff.numpy(), cmap="viridis", vmin=0.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="|corr_teacher - corr_student|")
    if class_names is not None and c <= 30:  # beyond ~30 classes names only add ink
        ax.set_xticks(range(c), labels=list(class_names), rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels=list(class_names), fontsize=7)
    ax.set_title(title or f"logit correlation difference, mean {diff.mean().item():.4f}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
