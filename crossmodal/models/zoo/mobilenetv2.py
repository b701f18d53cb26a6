"""MobileNetV2 (Sandler et al. 2018), the CIFAR variant of the CRD zoo: width 0.5, 1280-d last conv.

Stride-2 3x3 stem, seven groups of inverted residual blocks, 1x1 conv to 1280 channels, global
pool, linear. Block outputs are linear (no ReLU: the paper's linear bottleneck), so the stage
taps have no pre-activation distinct from the output: `preact_features[i] is features[i]` for
the stages. The taps follow the CRD zoo: stem, and after block groups 2, 3, 5 and 7.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.models.registry import register_model
from crossmodal.models.zoo.common import ZooModel, global_avg_pool, init_weights, reject_params

# (expansion factor, output channels at width 1, blocks, stride of the first block), as in the paper's Table 2;
# expansion None means "the model's expand_ratio".
BLOCK_GROUPS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
TAPPED_STAGES = [(0, 1), (2,), (3, 4), (5, 6)]  # block groups making each tapped stage
LAST_CONV_CHANNELS = 1280


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    """Conv (padding keeps the size at stride 1), BN, ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_shortcut else out


class MobileNetV2(ZooModel):
    """MobileNetV2 for small images (stride-2 stem, so 32 px inputs end at 2x2)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 100, width_mult: float = 0.5, expand_ratio: int = 6):
        stem_channels = int(32 * width_mult)
        channels = [int(c * width_mult) for _, c, _, _ in BLOCK_GROUPS]
        stage_channels = [stem_channels] + [channels[group[-1]] for group in TAPPED_STAGES]
        super().__init__(num_classes, embedding_dim=LAST_CONV_CHANNELS, stage_channels=stage_channels)
        # The stem's ReLU is applied in forward, to tap the pre-activation.
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(stem_channels)
        )
        groups, in_channels = [], stem_channels
        for (t, _, n, s), out_channels in zip(BLOCK_GROUPS, channels):
            t = expand_ratio if t is None else t
            blocks = []
            for stride in [s] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_channels, out_channels, stride, t))
                in_channels = out_channels
            groups.append(blocks)
        self.stages = nn.ModuleList(nn.Sequential(*[b for g in stage for b in groups[g]]) for stage in TAPPED_STAGES)
        self.last_conv = nn.Sequential(*_conv_bn_relu(in_channels, LAST_CONV_CHANNELS, 1))
        self.classifier = nn.Linear(LAST_CONV_CHANNELS, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> dict:
        preact = self.stem(x)
        x = F.relu(preact)
        features, preact_features = [x], [preact]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
            preact_features.append(x)
        return self._output(features, preact_features, global_avg_pool(self.last_conv(x)))


@register_model("MobileNetV2")
def mobilenetv2(in_chans: int = 3, num_classes: int = 100, **kw) -> MobileNetV2:
    """MobileNetV2 at width 0.5 (the CRD zoo's `MobileNetV2`); width_mult and expand_ratio may be overridden."""
    reject_params("MobileNetV2", kw, accepted=("width_mult", "expand_ratio"))
    return MobileNetV2(in_chans=in_chans, num_classes=num_classes, **kw)
