"""MobileNetV3 encoders for DeepLabv3+: the light, real-time choice beside the ResNets.

torchvision's MobileNetV3 ``features`` without its classifier. The low-level features for the
decoder are the last stride-4 stage (Large: ``features[3]``, 24 channels; Small:
``features[1]``, 16 channels), so the decoder and the three heads work at stride 4 as with a
ResNet; the high-level features for ASPP are the final 1x1 conv (960 or 576 channels) at the
output stride. Module names follow torchvision's, so its ImageNet weights load as they are.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn

MOBILENETS = {"mobilenet_v3_large": 4, "mobilenet_v3_small": 2}
"""Encoder name -> how many of ``features`` make the stride-4 low-level features."""


class MobileNetV3Encoder(nn.Module):
    """``forward(images [B, 3, H, W]) -> (low [B, C_low, H/4, W/4], high [B, C_high, H/s,
    W/s])`` with s the output stride (16 or 8)."""

    classifier_prefix = "classifier."
    """Keys of a torchvision checkpoint that the encoder drops (the ImageNet classifier)."""

    def __init__(self, mobilenet: torchvision.models.MobileNetV3, low_blocks: int,
                 output_stride: int) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.features = mobilenet.features
        dilate_mobilenet(self.features, output_stride)
        self.low_blocks = low_blocks
        self.output_stride = output_stride
        self.low_channels = _out_channels(self.features[low_blocks - 1])
        self.high_channels = _out_channels(self.features[-1])

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images
        for block in self.features[: self.low_blocks]:
            x = block(x)
        low = x
        for block in self.features[self.low_blocks:]:
            x = block(x)
        return low, x


def dilate_mobilenet(features: nn.Sequential, output_stride: int) -> None:
    """Trade every stride 2 beyond ``output_stride`` for dilation, as torchvision's
    ``mobilenet_v3_large(dilated=True)`` does for output stride 16: the block that would
    exceed it runs at stride 1, and its depthwise conv and every later one are dilated by 2
    per stride removed (padding kept 'same')."""
    stride, dilation = 1, 1
    for block in features:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            if conv.stride == (2, 2):
                if stride == output_stride:
                    conv.stride = (1, 1)
                    dilation *= 2
                else:
                    stride *= 2
        if dilation == 1:
            continue
        for conv in convs:
            k = conv.kernel_size[0]
            if k > 1 and conv.groups == conv.in_channels:
                conv.dilation = (dilation, dilation)
                conv.padding = ((k - 1) // 2 * dilation,) * 2


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def build_mobilenet(name: str, output_stride: int) -> MobileNetV3Encoder:
    """A randomly initialised MobileNetV3 encoder (``mobilenet_v3_large`` or ``_small``)."""
    return MobileNetV3Encoder(getattr(torchvision.models, name)(), MOBILENETS[name],
                              output_stride)
