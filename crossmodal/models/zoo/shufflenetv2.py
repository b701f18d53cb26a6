"""ShuffleNet V2 1x (Ma et al. 2018), CIFAR variant of the CRD zoo: stages 116/232/464, 1024-d last conv.

CIFAR stem: 3x3 conv to 24 channels at full resolution (no max-pool). Each stage is one
down-sampling unit (two stride-2 branches, concatenated) then units that split the channels in
half, transform one half, concatenate and shuffle (paper, Fig. 3c/d).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import (
    ZooModel,
    channel_shuffle,
    global_avg_pool,
    init_weights,
    reject_params,
    run_stem_and_stages,
)

STEM_CHANNELS = 24


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, depthwise: bool = False) -> nn.Sequential:
    """Conv (depthwise if asked; padding keeps the size at stride 1) followed by BN."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2,
                  groups=in_channels if depthwise else 1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class DownUnit(nn.Module):
    """Stride-2 unit: both branches see the whole input; their concatenation doubles the channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.left_dw = _conv_bn(in_channels, in_channels, 3, 2, depthwise=True)
        self.left_pw = _conv_bn(in_channels, mid, 1)
        self.right_pw1 = _conv_bn(in_channels, mid, 1)
        self.right_dw = _conv_bn(mid, mid, 3, 2, depthwise=True)
        self.right_pw2 = _conv_bn(mid, mid, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.left_pw(self.left_dw(x)))
        right = F.relu(self.right_pw2(self.right_dw(F.relu(self.right_pw1(x)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class SplitUnit(nn.Module):
    """Stride-1 unit: keep half the channels, transform the other half, concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.pw1 = _conv_bn(half, half, 1)
        self.dw = _conv_bn(half, half, 3, depthwise=True)
        self.pw2 = _conv_bn(half, half, 1)

    def _branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, transformed = x.chunk(2, dim=1)
        return kept, self.pw2(self.dw(F.relu(self.pw1(transformed))))

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffled concatenation before the branch's ReLU; relu(preact) is the output since `kept` is >= 0."""
        kept, branch = self._branch(x)
        return channel_shuffle(torch.cat([kept, branch], dim=1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = self._branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(branch)], dim=1), 2)


class ShuffleNetV2(ZooModel):
    """3x3 stem, three stages (a down unit + split units), 1x1 conv, global pool, linear."""

    def __init__(self, stage_channels: tuple[int, ...], split_units: tuple[int, ...], last_channels: int,
                 in_chans: int = 3, num_classes: int = 100):
        super().__init__(num_classes, embedding_dim=last_channels, stage_channels=[STEM_CHANNELS, *stage_channels])
        self.stem = _conv_bn(in_chans, STEM_CHANNELS, 3)
        stages, in_channels = [], STEM_CHANNELS
        for out_channels, n in zip(stage_channels, split_units):
            stages.append(nn.Sequential(DownUnit(in_channels, out_channels), *[SplitUnit(out_channels) for _ in range(n)]))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.last_conv = _conv_bn(in_channels, last_channels, 1)
        self.classifier = nn.Linear(last_channels, num_classes)
        init_weights(self)  # He init as the rest of the zoo (the CRD reference code left PyTorch's default here)

    def forward(self, x: torch.Tensor) -> dict:
        preact = self.stem(x)
        features, preact_features = run_stem_and_stages(preact, self.stages)
        x = features[-1]
        return self._output(features, preact_features, global_avg_pool(F.relu(self.last_conv(x))))


@register_model("ShuffleV2")
def shufflev2(in_chans: int = 3, num_classes: int = 100, **kw) -> ShuffleNetV2:
    """ShuffleNet V2 1x (stages 116/232/464 with 1+3/1+7/1+3 units, 1024-d last conv), CIFAR stem."""
    reject_params("ShuffleV2", kw)
    return ShuffleNetV2((116, 232, 464), (3, 7, 3), 1024, in_chans=in_chans, num_classes=num_classes)
