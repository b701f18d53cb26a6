"""Distillation losses (DESIGN.md contract 4): CRD and the other distillers, by name."""
from crossmodal.losses.base import (
    DistillSpec,
    Distiller,
    OutputShapes,
    build_distiller,
    get_distiller,
    list_distillers,
    output_shapes,
    register_distiller,
)

__all__ = [
    "DistillSpec",
    "Distiller",
    "OutputShapes",
    "build_distiller",
    "get_distiller",
    "list_distillers",
    "output_shapes",
    "register_distiller",
]
