"""VGG with batch norm (Simonyan & Zisserman 2015), CIFAR variant of the CRD zoo.

Five stages of 3x3 conv-BN-ReLU separated by 2x2 max-pools, then global average pooling and a
single 512 -> num_classes linear layer (no 4096-wide fully connected layers). The pool between
stages 3 and 4 is only applied for inputs of 64 px and more, so 32 px CIFAR images keep a 4x4
map in the last stage, as in the CRD zoo.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, global_avg_pool, init_weights, reject_params

# Output channels of each conv, per stage.
VGG_STAGES: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}
POOL_STAGE3_FROM_PX = 64  # input height from which the pool after stage 3 is applied


def _stage(in_channels: int, widths: list[int]) -> nn.Sequential:
    """conv-BN-ReLU per width, without the last ReLU (the network applies it, to tap the pre-activation)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """VGG-BN for small images: stages, max-pools, global average pool, one linear layer."""

    def __init__(self, stage_widths: list[list[int]], in_chans: int = 3, num_classes: int = 100):
        stage_channels = [widths[-1] for widths in stage_widths]
        super().__init__(num_classes, embedding_dim=stage_channels[-1], stage_channels=stage_channels)
        in_channels, stages = in_chans, []
        for widths in stage_widths:
            stages.append(_stage(in_channels, widths))
            in_channels = widths[-1]
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> dict:
        pool_after_stage3 = x.shape[-2] >= POOL_STAGE3_FROM_PX
        features, preact_features = [], []
        for i, stage in enumerate(self.stages):
            if i in (1, 2, 3) or (i == 4 and pool_after_stage3):
                x = F.max_pool2d(x, 2, 2)
            preact = stage(x)
            x = F.relu(preact)
            features.append(x)
            preact_features.append(preact)
        return self._output(features, preact_features, global_avg_pool(x))


def _register(name: str) -> None:
    @register_model(name)
    def build(in_chans: int = 3, num_classes: int = 100, **kw) -> VGG:
        reject_params(name, kw)
        return VGG(VGG_STAGES[name], in_chans=in_chans, num_classes=num_classes)

    build.__name__ = name
    build.__doc__ = f"{name} with batch norm, CIFAR variant (512-d classifier)."


for _name in VGG_STAGES:
    _register(_name)
