"""One factory for every model: `build_model(name, in_chans, num_classes)`.

Contract (`docs/ARCHITECTURE.md`, "Model outputs"): a model maps one modality's tensor (B, C, H, W) to a dict

    {"logits": (B, num_classes),
     "features": [ (B, C_i, H_i, W_i), ... ]   # stage outputs, stem first, post-activation
     "preact_features": [ ... ]                # same stages before the last ReLU (== features where none)
     "embedding": (B, D)}                      # pooled vector fed to the classifier

`features[i]` is RepDistiller's `feat[i]` for the 4-D taps; its last, pooled `feat[-1]` is `embedding`.
Models expose `model.embedding_dim` and `model.num_classes`.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from crossmodal.errors import ConfigError, did_you_mean

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class or function decorator registering a model builder under `name`."""

    def deco(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Names accepted by build_model (timm models are accepted as 'timm:<name>')."""
    _load_zoo()
    return sorted(MODELS)


def _load_zoo() -> None:
    import crossmodal.models.zoo  # noqa: F401  (registers the CIFAR-style zoo)


def build_model(name: str, in_chans: int = 3, num_classes: int = 100, **kwargs) -> nn.Module:
    """Build model `name` ('resnet8x4', 'timm:resnet18', ...) for `in_chans` input channels."""
    if name.startswith("timm:"):
        from crossmodal.models.timm_model import TimmModel

        return TimmModel(name[len("timm:"):], in_chans=in_chans, num_classes=num_classes, **kwargs)
    _load_zoo()
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, MODELS)} "
                          f"(known: {', '.join(sorted(MODELS))}, or timm:<name>)")
    return MODELS[name](in_chans=in_chans, num_classes=num_classes, **kwargs)
