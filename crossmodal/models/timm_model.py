"""Any timm model behind the zoo's output contract (`build_model("timm:<name>", in_chans, num_classes)`).

Stage features come from timm's own `forward_intermediates` when the model has it (most timm
models do, timm >= 1.0): one pass yields the stage maps in NCHW (ViT tokens reshaped to maps)
and the final features, which then go through `forward_head`, so tapping costs no second pass.
Models without it fall back to forward hooks on the modules listed in `model.feature_info`
(what `features_only` would tap); those maps are returned as the modules emit them.

timm does not expose the tensors before a stage's last activation, so `preact_features` are the
same tensors as `features`. Distillers that read pre-ReLU maps (AB) get post-activation ones
here; use a zoo model where that matters.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from crossmodal.errors import ConfigError, did_you_mean

FEATURE_TAPS = ("auto", "intermediates", "hooks")


def _create(name: str, in_chans: int, num_classes: int, pretrained: bool, **kw) -> nn.Module:
    """timm.create_model with one-line ConfigErrors for unknown names, bad parameters and unavailable weights."""
    import timm

    if not timm.is_model(name):
        hint = did_you_mean(name, timm.list_models(), prefix="timm:")
        raise ConfigError(f"unknown timm model {name!r}{hint} (see timm.list_models())")
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=in_chans, num_classes=num_classes, **kw)
    except TypeError as err:
        raise ConfigError(f"timm model {name!r} rejected parameters {sorted(kw)}: {err}") from err
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"could not load pretrained weights for timm:{name} ({first_line}); "
            "put them in the Hugging Face cache first or set pretrained: false"
        ) from err


class TimmModel(nn.Module):
    """A timm network returning {"logits", "features", "preact_features", "embedding"} like the zoo."""

    def __init__(self, name: str, in_chans: int = 3, num_classes: int = 100, pretrained: bool = False,
                 feature_taps: str = "auto", **kw):
        super().__init__()
        if feature_taps not in FEATURE_TAPS:
            raise ConfigError(f"feature_taps must be one of {', '.join(FEATURE_TAPS)}, got {feature_taps!r}")
        self.name = name
        self.net = _create(name, in_chans, num_classes, pretrained, **kw)
        self.num_classes = num_classes
        # pre_logits output width: `head_hidden_size` where the head has a hidden layer, else num_features.
        self.embedding_dim = int(getattr(self.net, "head_hidden_size", None) or self.net.num_features)
        feature_info = getattr(self.net, "feature_info", None) or []
        self.stage_channels = [int(info["num_chs"]) for info in feature_info]
        has_intermediates = hasattr(self.net, "forward_intermediates")
        if feature_taps == "auto":
            feature_taps = "intermediates" if has_intermediates else "hooks"
        if feature_taps == "intermediates" and not has_intermediates:
            raise ConfigError(f"timm model {name!r} has no forward_intermediates; use feature_taps: hooks")
        if feature_taps == "hooks" and not feature_info:
            raise ConfigError(f"timm model {name!r} lists no feature_info modules to hook; pick another model")
        self.feature_taps = feature_taps
        self._tapped: list[torch.Tensor] | None = None  # a list only while our own forward runs
        if feature_taps == "hooks":
            for info in feature_info:
                self.net.get_submodule(info["module"]).register_forward_hook(self._tap)

    def _tap(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        if self._tapped is not None:
            self._tapped.append(output)

    @property
    def classifier(self) -> nn.Module:
        """The final layer mapping `embedding` to `logits`."""
        return self.net.get_classifier()

    def forward(self, x: torch.Tensor) -> dict:
        if self.feature_taps == "intermediates":
            final, features = self.net.forward_intermediates(x)
        else:
            self._tapped = []
            try:
                final = self.net.forward_features(x)
                features = self._tapped
            finally:
                self._tapped = None
        embedding = self.net.forward_head(final, pre_logits=True)  # (B, D): pooled (and head-normed) features
        return {
            "logits": self.classifier(embedding),  # (B, num_classes)
            "features": list(features),
            "preact_features": list(features),
            "embedding": embedding,
        }
