"""Atrous spatial pyramid pooling (docs/method.md section 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """Bias-free conv, BatchNorm, ReLU; 'same' padding for odd kernels."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ImagePooling(nn.Sequential):
    """ASPP's image-level branch: global average, 1x1 conv-BN-ReLU, broadcast back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        pooled = super().forward(x)
        return F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """A 1x1 branch, three 3x3 atrous branches and image pooling, each 256 channels,
    concatenated and projected to 256 by a 1x1 conv-BN-ReLU.

    ``forward(x [B, C_in, h, w]) -> [B, 256, h, w]``. Rates are (6, 12, 18) at output stride
    16 and (12, 24, 36) at 8.
    """

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [conv_bn_relu(cin, cout)]
            + [conv_bn_relu(cin, cout, kernel=3, dilation=r) for r in rates]
            + [ImagePooling(cin, cout)]
        )
        self.project = conv_bn_relu(5 * cout, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
