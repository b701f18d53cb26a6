"""Pieces every zoo network shares: the output dict, weight init, and stage taps."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError


class ZooModel(nn.Module):
    """Base of the CIFAR-style zoo: records the attributes the registry contract promises."""

    def __init__(self, num_classes: int, embedding_dim: int, stage_channels: list[int]):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim
        self.stage_channels = list(stage_channels)  # channels of each entry of `features`, stem first

    def stem_and_stages_forward(self, x: torch.Tensor) -> dict:
        """The contract dict of a conv1 -> bn1 stem, then `self.stages`, then global average pooling (CIFAR
        ResNets, the bottleneck ResNet-50, ShuffleNet V1)."""
        features, preact_features = run_stem_and_stages(self.bn1(self.conv1(x)), self.stages)
        return self._output(features, preact_features, global_avg_pool(features[-1]))

    def _output(self, features: list[torch.Tensor], preact_features: list[torch.Tensor], pooled: torch.Tensor) -> dict:
        """Flatten the pooled map, apply the subclass's `self.classifier` (a Linear), and pack the contract dict."""
        embedding = torch.flatten(pooled, 1)  # (B, D)
        return {
            "logits": self.classifier(embedding),  # (B, num_classes)
            "features": features,
            "preact_features": preact_features,
            "embedding": embedding,
        }


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 1, 1); any H, W, so the zoo accepts any input size >= 32."""
    return F.adaptive_avg_pool2d(x, 1)


def run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a stage of blocks that expose `preact(x)`; return (output, the last block's pre-ReLU sum)."""
    *body, last = stage
    for block in body:
        x = block(x)
    preact = last.preact(x)
    return F.relu(preact), preact


def shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Residual shortcut: identity, or 1x1 conv + BN when the shape changes (ResNet option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


def run_stem_and_stages(stem_preact: torch.Tensor, stages: nn.ModuleList) -> tuple[list, list]:
    """ReLU the stem's pre-activation, run each stage; return (features, preact_features), stem first."""
    x = F.relu(stem_preact)
    features, preact_features = [x], [stem_preact]
    for stage in stages:
        x, preact = run_stage(stage, x)
        features.append(x)
        preact_features.append(preact)
    return features, preact_features


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channel j of group k moves to j*groups + k, so the next grouped conv sees every group."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # Shuffle in NHWC so a channels_last network stays channels_last (no layout flip per unit).
        nhwc = x.permute(0, 2, 3, 1)  # (B, H, W, C), a contiguous view
        shuffled = nhwc.reshape(b, h, w, groups, c // groups).transpose(3, 4).reshape(b, h, w, c)
        return shuffled.permute(0, 3, 1, 2)
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Init as the reference nets: He (fan_out) convs, BN weight 1 bias 0, optional N(0, std) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


def reject_params(model_name: str, params: dict, accepted: tuple[str, ...] = ()) -> None:
    """Raise a one-line ConfigError for keyword parameters model `model_name` does not take."""
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "none besides in_chans and num_classes"
        raise ConfigError(f"model {model_name!r} has no parameter {unknown[0]!r} (accepted: {takes}); remove it from the config")
