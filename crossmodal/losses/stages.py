"""Stage maps shared by the feature distillers (AT, AB, FSP, FT, NST, VID): which pairs, at which size.

Pairing: the stem is skipped and the *last* min(n_s, n_t) - 1 stage maps of each network are paired,
so a deeper teacher lines up its deepest stages with the student's. Paired maps of different sizes
are compared after adaptive-average-pooling the larger one to the smaller (as the reference code does).
"""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch
import torch.nn.functional as F

from crossmodal.errors import ConfigError

T = TypeVar("T")


def last_stages(student: Sequence[T], teacher: Sequence[T], loss: str) -> list[tuple[T, T]]:
    """Pair the last min(n_s, n_t) - 1 non-stem stages of student and teacher (lists stem first)."""
    n = min(len(student), len(teacher)) - 1
    if n < 1:
        raise ConfigError(
            f"loss {loss!r} needs at least one stage after the stem in both models "
            f"(student has {len(student)} feature maps, teacher {len(teacher)})"
        )
    return list(zip(student[-n:], teacher[-n:]))


def pool_to_smaller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool whichever of two (B, C, H, W) maps is larger to the other's H, W."""
    ha, wa = a.shape[-2:]
    hb, wb = b.shape[-2:]
    if (ha, wa) == (hb, wb):
        return a, b
    if ha * wa > hb * wb:
        return F.adaptive_avg_pool2d(a, (hb, wb)), b
    return a, F.adaptive_avg_pool2d(b, (ha, wa))
