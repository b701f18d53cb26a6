"""CIFAR ResNets (He et al. 2016, section 4.2): 3x3 stem, three stages of basic blocks, 6n+2 layers.

`resnet<d>` uses widths 16/32/64 (stem 16); the CRD paper's `resnet<d>x4` teachers/students use
a 32-wide stem and stages 64/128/256. Shortcuts that change shape are 1x1 conv + BN (option B).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, init_weights, reject_params, shortcut


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; `preact` is the sum before the block's last ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """Residual sum before the final ReLU."""
        out = F.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.preact(x))


class CifarResNet(ZooModel):
    """Stem + three stages of `blocks_per_stage` basic blocks (strides 1, 2, 2) + global pool + linear."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_chans: int = 3, num_classes: int = 100):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        super().__init__(num_classes, embedding_dim=widths[3], stage_channels=list(widths))
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        stages = []
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [BasicBlock(in_planes, planes, stride)]
            blocks += [BasicBlock(planes, planes) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict:
        return self.stem_and_stages_forward(x)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    @register_model(name)
    def build(in_chans: int = 3, num_classes: int = 100, **kw) -> CifarResNet:
        reject_params(name, kw)
        return CifarResNet(depth, widths, in_chans=in_chans, num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, widths {'/'.join(map(str, widths))}."


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64))
for _depth in (8, 32):
    _register(f"resnet{_depth}x4", _depth, (32, 64, 128, 256))
