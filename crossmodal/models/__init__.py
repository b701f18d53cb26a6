"""Model zoo and factory (DESIGN.md contract 3)."""
from crossmodal.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
