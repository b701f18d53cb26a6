"""Imports every distiller module so that each registers its name (crossmodal.losses.base).

Each loss's `default_weight` is the beta of the reference scripts (RepDistiller, as used in the CRD
paper's comparisons) for that method alongside ce 1. Two combinations differ from "ce 1 + method":
plain KD uses ce 0.1 / kd 0.9, and CRD+KD uses ce 1 / kd 1 / crd 0.8. AB and FSP act in their init
stage (see their modules), so their weight only matters with keep_after_init=True.
"""
from crossmodal.losses import ab, at, cc, ce, crd, fitnet, fsp, ft, kd, nst, pkt, rkd, sp, vid  # noqa: F401
