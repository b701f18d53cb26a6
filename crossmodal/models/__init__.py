"""Model zoo and factory (`docs/ARCHITECTURE.md`, "Model outputs")."""
from crossmodal.models.registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
