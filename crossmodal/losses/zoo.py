"""Imports every distiller module so that each registers its name, and collects their weights.

`DEFAULT_WEIGHTS[name]` is each loss's `default_weight`: the beta of the reference scripts
(RepDistiller, as used in the CRD paper's comparisons) for that method alongside ce 1. Two
combinations differ from "ce 1 + method": plain KD uses ce 0.1 / kd 0.9, and CRD+KD uses
ce 1 / kd 1 / crd 0.8. AB and FSP act in their init stage (see their modules), so their weight
only matters with keep_after_init=True.
"""
from __future__ import annotations

from crossmodal.losses import ab, at, cc, ce, crd, fitnet, fsp, ft, kd, nst, pkt, rkd, sp, vid  # noqa: F401
from crossmodal.losses.base import DISTILLERS

DEFAULT_WEIGHTS: dict[str, float] = {name: float(cls.default_weight) for name, cls in sorted(DISTILLERS.items())}
