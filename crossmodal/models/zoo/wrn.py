"""Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR: WRN-depth-k with pre-activation blocks.

Pre-activation means a stage's output is the raw residual sum; the BN+ReLU that "activates" it
is the first layer of the next stage (or the final BN before pooling). We tap each stage there:
`preact_features[i]` is BN(stage output) and `features[i]` its ReLU, computed once and then fed
on, so taps cost nothing extra and `features[i] == relu(preact_features[i])` as in every zoo net.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, global_avg_pool, init_weights, reject_params


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus a shortcut (1x1 conv on the activated input if shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.conv_shortcut = None
        if stride != 1 or in_planes != planes:
            self.conv_shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor, x_act: torch.Tensor | None = None) -> torch.Tensor:
        """`x_act` = relu(bn1(x)) when the caller already computed it (to tap it)."""
        if x_act is None:
            x_act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(x_act)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # As in the paper's code: identity shortcuts carry the raw sum, projections see the activated input.
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x_act)
        return out + shortcut


class WideResNet(ZooModel):
    """WRN-depth-widen: 3x3 stem (16), three stages of (depth-4)/6 wide blocks at 16k/32k/64k, BN-ReLU, pool, linear."""

    def __init__(self, depth: int, widen: int, in_chans: int = 3, num_classes: int = 100, drop_rate: float = 0.0):
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks_per_stage = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        super().__init__(num_classes, embedding_dim=widths[3], stage_channels=widths)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        stages, in_planes = [], widths[0]
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [WideBlock(in_planes, planes, stride, drop_rate)]
            blocks += [WideBlock(planes, planes, 1, drop_rate) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stages = nn.ModuleList(stages)
        self.bn_final = nn.BatchNorm2d(widths[3])
        self.classifier = nn.Linear(widths[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> dict:
        x = self.conv1(x)
        features, preact_features = [], []
        for stage in self.stages:
            first = stage[0]
            preact = first.bn1(x)  # the activation of the previous stage's (or the stem's) output
            x_act = F.relu(preact)
            features.append(x_act)
            preact_features.append(preact)
            x = first(x, x_act)
            for block in stage[1:]:
                x = block(x)
        preact = self.bn_final(x)
        x = F.relu(preact)
        features.append(x)
        preact_features.append(preact)
        return self._output(features, preact_features, global_avg_pool(x))


def _register(depth: int, widen: int) -> None:
    name = f"wrn_{depth}_{widen}"

    @register_model(name)
    def build(in_chans: int = 3, num_classes: int = 100, **kw) -> WideResNet:
        reject_params(name, kw, accepted=("drop_rate",))
        return WideResNet(depth, widen, in_chans=in_chans, num_classes=num_classes, **kw)

    build.__name__ = name
    build.__doc__ = f"WRN-{depth}-{widen} (optional drop_rate between the convs of each block)."


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
