"""ResNet-50 (He et al. 2016) with a CIFAR stem: a 3x3 stride-1 conv and no max-pool.

Bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4), stages of 3/4/6/3 blocks at 64/128/256/512
(outputs 256/512/1024/2048), projection shortcuts (1x1 conv + BN) where the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, init_weights, reject_params, shortcut

EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus shortcut; `preact` is the sum before the last ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = shortcut(in_planes, out_planes, stride)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preact(x))


class ResNetBottleneck(ZooModel):
    """Bottleneck ResNet with a CIFAR stem: stem, four stages (strides 1, 2, 2, 2), global pool, linear."""

    def __init__(self, blocks_per_stage: tuple[int, ...], in_chans: int = 3, num_classes: int = 100):
        widths = (64, 128, 256, 512)
        stage_channels = [64] + [w * EXPANSION for w in widths]
        super().__init__(num_classes, embedding_dim=stage_channels[-1], stage_channels=stage_channels)
        self.conv1 = nn.Conv2d(in_chans, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for planes, n, stride in zip(widths, blocks_per_stage, (1, 2, 2, 2)):
            blocks = [Bottleneck(in_planes, planes, stride)]
            blocks += [Bottleneck(planes * EXPANSION, planes) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes * EXPANSION
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(in_planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict:
        return self.stem_and_stages_forward(x)


@register_model("ResNet50")
def resnet50(in_chans: int = 3, num_classes: int = 100, **kw) -> ResNetBottleneck:
    """ResNet-50 (3/4/6/3 bottlenecks) with a CIFAR stem."""
    reject_params("ResNet50", kw)
    return ResNetBottleneck((3, 4, 6, 3), in_chans=in_chans, num_classes=num_classes)
