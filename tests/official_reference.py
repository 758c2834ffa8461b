"""A test-only transcription of the authors' network, to check that ``load_official`` gives
the same outputs: their module names and structure (``resnet_*``, ``ASPP``, ``project``,
``classifier``, ``representation``; the separate ``Uncertainty_head``), their way of dilating
ResNet-101 (stride -> dilation on conv attributes), and their per-pixel linear layers written
with permutes. Written from docs/method.md section 2 and the authors' public description."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def _no_stride_dilate(module: nn.Module, dilate: int) -> None:
    if not isinstance(module, nn.Conv2d):
        return
    if module.stride == (2, 2):
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            module.dilation = module.padding = (dilate // 2, dilate // 2)
    elif module.kernel_size == (3, 3):
        module.dilation = module.padding = (dilate, dilate)


def _cbr(cin: int, cout: int, k: int = 1, d: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=d * (k - 1) // 2, dilation=d, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


class TheirASPP(nn.Module):
    def __init__(self, rates: tuple[int, int, int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Sequential(*_cbr(2048, 256))]
            + [nn.Sequential(*_cbr(2048, 256, 3, r)) for r in rates]
            + [nn.Sequential(nn.AdaptiveAvgPool2d(1), *_cbr(2048, 256))]
        )
        self.project = nn.Sequential(*_cbr(1280, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [conv(x) for conv in self.convs[:4]]
        pooled = self.convs[4](x)
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, dim=1))


class TheirDeepLab(nn.Module):
    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        resnet = torchvision.models.resnet101()
        resnet.layer4.apply(partial(_no_stride_dilate, dilate=2))
        self.resnet_conv1, self.resnet_bn1 = resnet.conv1, resnet.bn1
        self.resnet_relu1, self.resnet_maxpool = resnet.relu, resnet.maxpool
        self.resnet_layer1, self.resnet_layer2 = resnet.layer1, resnet.layer2
        self.resnet_layer3, self.resnet_layer4 = resnet.layer3, resnet.layer4
        self.ASPP = TheirASPP((6, 12, 18))
        self.project = nn.Sequential(*_cbr(256, 48))
        self.classifier = nn.Sequential(*_cbr(304, 256, 3), nn.Conv2d(256, num_classes, 1))
        self.representation = nn.Sequential(*_cbr(304, 256, 3), nn.Conv2d(256, 256, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.resnet_maxpool(self.resnet_relu1(self.resnet_bn1(self.resnet_conv1(x))))
        x_low = self.resnet_layer1(x)
        x = self.resnet_layer4(self.resnet_layer3(self.resnet_layer2(x_low)))
        feature = self.ASPP(x)
        x_low = self.project(x_low)
        up = F.interpolate(feature, size=x_low.shape[2:], mode="bilinear", align_corners=True)
        cat = torch.cat([x_low, up], dim=1)
        return self.classifier(cat), self.representation(cat), cat


class TheirUncertaintyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Parameter(torch.randn(256, 304))
        self.bn1 = nn.BatchNorm2d(256, affine=True)
        self.relu = nn.ReLU()
        self.fc2 = nn.Parameter(torch.randn(256, 256))
        self.bn2 = nn.BatchNorm2d(256, affine=False)
        self.gamma = nn.Parameter(torch.tensor([1.0]))
        self.beta = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x.permute(0, 2, 3, 1), F.normalize(self.fc1, dim=-1)).permute(0, 3, 1, 2)
        x = self.relu(self.bn1(x))
        x = F.linear(x.permute(0, 2, 3, 1), F.normalize(self.fc2, dim=-1)).permute(0, 3, 1, 2)
        x = self.gamma * self.bn2(x) + self.beta
        return torch.sigmoid(torch.log(torch.exp(x) + 1e-6))


def randomise_(module: nn.Module, generator: torch.Generator) -> None:
    """Fill every parameter and buffer (BN statistics included) with random values, so that an
    eval-mode comparison exercises all of them."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.dtype == torch.long:
                continue
            if name.endswith("running_var") or (tensor.dim() == 1 and name.endswith("weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in**0.5)
