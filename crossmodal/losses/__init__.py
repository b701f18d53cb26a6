"""Distillation losses: CRD and the other distillers, by name (`docs/ARCHITECTURE.md`, "The distiller interface")."""
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
