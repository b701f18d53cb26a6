"""ShuffleNet V1 (Zhang et al. 2018), CIFAR variant of the CRD zoo: g=3, stages 240/480/960, 4/8/4 units.

CIFAR stem: a 1x1 conv to 24 channels at full resolution (no stride, no max-pool). Each unit is
grouped 1x1 -> channel shuffle -> 3x3 depthwise -> grouped 1x1; stride-2 units concatenate a
3x3 average-pooled shortcut instead of adding it (paper, Fig. 2c).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, channel_shuffle, init_weights, reject_params

STEM_CHANNELS = 24


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit; `preact` is the sum (stride 1) or concatenation (stride 2) before the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_pointwise_groups: int):
        super().__init__()
        # A stride-2 unit concatenates its input, so its branch only makes the missing channels.
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid = branch_channels // 4
        self.stride = stride
        self.shuffle_groups = first_pointwise_groups
        self.conv1 = nn.Conv2d(in_channels, mid, 1, groups=first_pointwise_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_channels, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """Branch combined with the shortcut, before the unit's ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        if self.shuffle_groups > 1:
            out = channel_shuffle(out, self.shuffle_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], dim=1)
        return out + x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preact(x))


class ShuffleNetV1(ZooModel):
    """1x1 stem, three stages of shuffle units (first unit of each stride 2), global pool, linear."""

    def __init__(self, stage_channels: tuple[int, ...], units: tuple[int, ...], groups: int, in_chans: int = 3, num_classes: int = 100):
        super().__init__(num_classes, embedding_dim=stage_channels[-1], stage_channels=[STEM_CHANNELS, *stage_channels])
        self.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        stages, in_channels = [], STEM_CHANNELS
        for out_channels, n in zip(stage_channels, units):
            blocks = []
            for i in range(n):
                # The paper leaves the network's very first pointwise conv ungrouped: its input is only 24 wide.
                first_groups = 1 if not stages and i == 0 else groups
                blocks.append(ShuffleUnit(in_channels, out_channels, 2 if i == 0 else 1, groups, first_groups))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self)  # He init as the rest of the zoo (the CRD reference code left PyTorch's default here)

    def forward(self, x: torch.Tensor) -> dict:
        return self.stem_and_stages_forward(x)


@register_model("ShuffleV1")
def shufflev1(in_chans: int = 3, num_classes: int = 100, **kw) -> ShuffleNetV1:
    """ShuffleNet V1 1x, g=3 (stages 240/480/960, 4/8/4 units), CIFAR stem."""
    reject_params("ShuffleV1", kw)
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), groups=3, in_chans=in_chans, num_classes=num_classes)
