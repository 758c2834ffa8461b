"""DeepLabv3+ with three heads: classes, representation mean mu, and variance sigma^2
(docs/method.md section 2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prcl.config import ModelConfig
from prcl.models.aspp import ASPP, conv_bn_relu
from prcl.models.encoders import Encoder, build_encoder
from prcl.models.probability_head import ProbabilityHead

LOW_LEVEL_CHANNELS = 48


class SegmentationOutput(NamedTuple):
    """What the network returns, all at the stride of the encoder's low-level features: 4
    ([B, ., H/4, W/4]) for every built-in encoder and every timm model with a stride-4 stage.

    logits: [B, C, h, w] class scores. mu: [B, D, h, w] representation mean (unnormalised).
    var: [B, D, h, w] sigma^2 in (0, 1). feature: [B, 304, h, w] the decoder input.
    mu and var are None when the network was called with ``representation=False``.
    """

    logits: Tensor
    mu: Tensor | None
    var: Tensor | None
    feature: Tensor


def head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """3x3 conv-BN-ReLU then a 1x1 conv with bias (the classification and mu heads)."""
    return nn.Sequential(*conv_bn_relu(cin, hidden, kernel=3), nn.Conv2d(hidden, cout, 1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ for PRCL.

    ``forward(images [B, 3, H, W], representation=True) -> SegmentationOutput``; images are
    normalised with ImageNet statistics (``prcl.data.normalize``). The decoder feature is
    layer1 projected to 48 channels concatenated with the ASPP output upsampled bilinearly
    (align_corners=True) to layer1's size: 48 + aspp_channels channels (304, the paper's) at
    stride 4. The classification head, the representation head (mu) and the probability head
    (sigma^2) all read that feature.
    """

    def __init__(
        self,
        encoder: Encoder,
        num_classes: int,
        rep_dim: int = 256,
        head_channels: int = 256,
        aspp_channels: int = 256,
    ) -> None:
        super().__init__()
        rates = (6, 12, 18) if encoder.output_stride == 16 else (12, 24, 36)
        feature_channels = LOW_LEVEL_CHANNELS + aspp_channels
        self.encoder = encoder
        self.aspp = ASPP(encoder.high_channels, rates, aspp_channels)
        self.low_level = conv_bn_relu(encoder.low_channels, LOW_LEVEL_CHANNELS)
        self.classifier = head(feature_channels, head_channels, num_classes)
        self.representation = head(feature_channels, head_channels, rep_dim)
        self.probability_head = ProbabilityHead(feature_channels, rep_dim)
        self.num_classes = num_classes

    def forward(self, images: Tensor, representation: bool = True) -> SegmentationOutput:
        feature = self.decoder_feature(images)
        logits = self.classifier(feature)
        if not representation:
            return SegmentationOutput(logits, None, None, feature)
        return SegmentationOutput(
            logits, self.representation(feature), self.probability_head(feature), feature
        )

    def decoder_feature(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] (normalised) -> the feature every head reads [B, 48 +
        aspp_channels, h, w]."""
        low, high = self.encoder(images)
        low = self.low_level(low)
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear",
                                align_corners=True)
        return torch.cat([low, context], dim=1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``network``: encoder, ASPP, decoder, classification and representation heads;
        ``probability_head``: the variance head, trained by its own optimiser
        (docs/method.md 7.9)."""
        head_ids = {id(p) for p in self.probability_head.parameters()}
        return {
            "network": [p for p in self.parameters() if id(p) not in head_ids],
            "probability_head": list(self.probability_head.parameters()),
        }


def build_model(
    encoder: str = "resnet101",
    num_classes: int = 21,
    output_stride: int = 16,
    pretrained: str | None = None,
    rep_dim: int = 256,
    head_channels: int = 256,
    aspp_channels: int = 256,
) -> DeepLabV3Plus:
    """DeepLabv3+ PRCL network. ``encoder``: a name of ``ENCODERS`` or ``timm:<name>``.
    ``pretrained``: encoder weights (a local file; 'torchvision', or 'timm' for a timm encoder,
    to download; None for random initialisation); see ``build_encoder``."""
    return DeepLabV3Plus(build_encoder(encoder, output_stride, pretrained), num_classes, rep_dim,
                         head_channels, aspp_channels)


def model_from_config(m: ModelConfig, num_classes: int, pretrained: bool = True) -> DeepLabV3Plus:
    """The network a config's ``model`` section describes; ``pretrained=False`` skips the
    encoder weights (when a checkpoint's weights are loaded next)."""
    return build_model(m.encoder, num_classes, m.output_stride,
                       m.pretrained if pretrained else None, m.rep_dim, m.head_channels,
                       m.aspp_channels)
