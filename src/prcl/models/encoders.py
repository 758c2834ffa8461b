"""Encoders for DeepLabv3+ (docs/method.md section 2), with local weight loading: the ResNets of
the paper here, the lighter MobileNetV3s in ``prcl.models.mobilenet``.

Every encoder returns two feature maps: ``low`` (layer1, stride 4) for the decoder and ``high``
(layer4) for ASPP, at output stride 16 (layer4 dilated) or 8 (layer3 and layer4 dilated).
Module names follow torchvision's ResNet, so a torchvision state dict (e.g. the seed's
``resnet101-63fe2227.pth``) loads as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from prcl.errors import CheckpointError
from prcl.models.mobilenet import MOBILENETS, MobileNetV3Encoder, build_mobilenet
from prcl.models.timm_encoder import TIMM_PREFIX, TimmEncoder, build_timm_encoder
from prcl.models.weights import check_fit, read_state_dict, unwrap_state_dict

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet101_deepstem",
            *MOBILENETS)

_TORCHVISION_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights",
    "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
}


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its pooling and classifier.

    ``forward(images [B, 3, H, W]) -> (low [B, C_low, H/4, W/4], high [B, C_high, H/s, W/s])``
    with s the output stride. C_low is 256 for ResNet-50/101 and 64 for ResNet-18/34; C_high
    is 2048 and 512. ResNet-18/34 reach the same output strides (16 or 8) as the deeper
    encoders: their 3x3 convolutions are dilated the same way (torchvision's constructor
    refuses dilation for these BasicBlock encoders, so ``dilate_layer`` does it afterwards).
    """

    def __init__(self, resnet: torchvision.models.ResNet, output_stride: int) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        )
        if output_stride == 8:
            dilate_layer(self.layer3, dilation=2, previous_dilation=1)
            dilate_layer(self.layer4, dilation=4, previous_dilation=2)
        else:
            dilate_layer(self.layer4, dilation=2, previous_dilation=1)
        self.output_stride = output_stride
        bottleneck = isinstance(self.layer1[0], Bottleneck)
        self.low_channels = 256 if bottleneck else 64
        self.high_channels = 2048 if bottleneck else 512

    classifier_prefix = "fc."
    """Keys of a torchvision checkpoint that the encoder drops (the ImageNet classifier)."""

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        low = self.layer1(x)
        high = self.layer4(self.layer3(self.layer2(low)))
        return low, high


Encoder = ResNetEncoder | MobileNetV3Encoder | TimmEncoder


def dilate_layer(layer: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Trade a ResNet stage's stride 2 for dilation, as torchvision's
    ``replace_stride_with_dilation`` does: the strided 3x3 conv of the first block keeps
    ``previous_dilation`` with stride 1, every other 3x3 conv gets ``dilation``, and the
    shortcut's strided 1x1 conv gets stride 1.
    """
    for module in layer.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        if module.stride == (2, 2):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation = module.padding = (previous_dilation, previous_dilation)
        elif module.kernel_size == (3, 3):
            module.dilation = module.padding = (dilation, dilation)


def _deep_stem_resnet101() -> torchvision.models.ResNet:
    """ResNet-101 whose 7x7 stem is three 3x3 convs (64, 64, 128 channels), as in the
    authors' "ResNet-101 stem" checkpoint: conv1.{0,3,6} convs, conv1.{1,4} BN, bn1 on 128
    channels, layer1 fed 128 channels. Two differences from the authors' module, neither
    touching the weights: the max-pool rounds down (theirs uses ceil_mode, which makes even
    input sizes one pixel larger than H/4), and the dilation follows our output stride (theirs
    adds multi-grid rates to layer4)."""
    resnet = torchvision.models.resnet101()

    def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

    resnet.conv1 = nn.Sequential(
        conv3x3(3, 64, stride=2), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        conv3x3(64, 64), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        conv3x3(64, 128),
    )
    resnet.bn1 = nn.BatchNorm2d(128)
    resnet.inplanes = 128
    resnet.layer1 = resnet._make_layer(Bottleneck, 64, 3)
    return resnet


def build_encoder(name: str, output_stride: int = 16, weights: str | None = None) -> Encoder:
    """Build an encoder by name (``ENCODERS``, or ``timm:<name>`` for any timm model: see
    ``prcl.models.timm_encoder.build_timm_encoder``).

    ``weights``: None (random init), a path to a local state dict in torchvision's format (or
    the deep-stem checkpoint's format for ``resnet101_deepstem``), or ``"torchvision"`` to
    download torchvision's ImageNet weights (needs a network).
    """
    if name.startswith(TIMM_PREFIX):
        return build_timm_encoder(name.removeprefix(TIMM_PREFIX), output_stride, weights)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder '{name}'; choose from {', '.join(ENCODERS)} or "
                         f"{TIMM_PREFIX}<name>")
    if name in MOBILENETS:
        encoder = build_mobilenet(name, output_stride)
    else:
        resnet = _deep_stem_resnet101() if name == "resnet101_deepstem" else (
            getattr(torchvision.models, name)())
        encoder = ResNetEncoder(resnet, output_stride)
    if weights == "package":
        raise CheckpointError(f"model.pretrained=package is for timm encoders whose ImageNet "
                              f"weights a pip package ships (timm:tf_efficientnet_lite0); for "
                              f"{name} give a weights file or model.pretrained=torchvision")
    if weights == "torchvision":
        if name not in _TORCHVISION_WEIGHTS:
            raise CheckpointError(
                f"torchvision has no ImageNet weights for '{name}': give a local file instead"
            )
        weights_enum = getattr(torchvision.models, _TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
        try:
            state = weights_enum.get_state_dict(progress=True)
        except OSError as exc:  # URLError and the other ways a download fails
            raise CheckpointError(
                f"could not download torchvision's ImageNet weights for {name} from "
                f"{weights_enum.url} ({getattr(exc, 'reason', exc)}); without a network, "
                "fetch that file elsewhere and give its path: model.pretrained=/path/to/it.pth"
            ) from None
        load_encoder_weights(encoder, state)
    elif weights is not None:
        load_encoder_weights(encoder, weights)
    return encoder


def load_encoder_weights(encoder: Encoder, source: str | Path | Mapping[str, Tensor]) -> None:
    """Load ImageNet weights into ``encoder`` from a file (``.pth``, or ``.safetensors``) or a
    state dict.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``, with or without
    a ``module.`` prefix; the classifier (``fc.*``, or ``classifier.*`` for MobileNetV3) is
    dropped. Any other missing or unexpected key, or a shape that does not fit, raises
    ``CheckpointError`` naming the file and the first offending keys.
    """
    name = str(source) if isinstance(source, str | Path) else "the given state dict"
    state = read_state_dict(source) if isinstance(source, str | Path) else unwrap_state_dict(source)
    state = {k: v for k, v in state.items() if not k.startswith(encoder.classifier_prefix)}
    check_fit(encoder.state_dict(), state, name, "Check that model.encoder names the network "
              "these weights were trained for (torchvision format, or the deep-stem format for "
              "resnet101_deepstem).")
    encoder.load_state_dict(state)
