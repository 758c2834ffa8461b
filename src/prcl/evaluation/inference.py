"""Full-resolution inference: the whole image (VOC) or a sliding window (Cityscapes).

The authors evaluate a random 321x321 crop of each validation image (docs/method.md section 9);
here every pixel of every validation image is predicted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prcl.data import normalize
from prcl.models import DeepLabV3Plus


class Prediction(NamedTuple):
    """probs: [B, C, H, W] softmax at image size. uncertainty: [B, 1, H, W] the mean over
    dimensions of sigma^2 at image size, or None when not asked for."""

    probs: Tensor
    uncertainty: Tensor | None


Segment = Callable[[Tensor, bool], Prediction]
"""One pass of a segmenter: (images [B, 3, H, W] in [0, 1], whether the uncertainty is wanted)
-> ``Prediction`` at image size. A ``DeepLabV3Plus`` is one through ``Segmenter``; an exported
ONNX file is one through ``prcl.runtime.OnnxSegment``."""


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Segmenter(nn.Module):
    """The network as it is used and exported: ``forward(images [B, 3, H, W], normalised)
    -> (probs [B, C, H, W],)``, the softmax of the class scores upsampled (bilinear,
    align_corners) to image size, or ``(probs, uncertainty [B, 1, H, W])`` with
    ``uncertainty``: the mean over dimensions of sigma^2, upsampled the same way. The
    representation mu is not computed."""

    def __init__(self, model: DeepLabV3Plus, uncertainty: bool = True) -> None:
        super().__init__()
        self.model = model
        self.uncertainty = uncertainty

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        size = images.shape[-2:]
        feature = self.model.decoder_feature(images)
        probs = _upsample(self.model.classifier(feature), size).softmax(1)
        if not self.uncertainty:
            return (probs,)
        var = self.model.probability_head(feature).float().mean(1, keepdim=True)
        return probs, _upsample(var, size)


def _as_segment(model: DeepLabV3Plus | Segment) -> Segment:
    if not isinstance(model, nn.Module):
        return model

    def segment(images: Tensor, uncertainty: bool) -> Prediction:
        outputs = Segmenter(model, uncertainty)(normalize(images))
        return Prediction(outputs[0], outputs[1] if uncertainty else None)

    return segment


@torch.no_grad()
def predict_whole(
    model: DeepLabV3Plus | Segment, images: Tensor, flip: bool = False,
    uncertainty: bool = False,
) -> Prediction:
    """images: [B, 3, H, W] in [0, 1]. The network (or any ``Segment``) sees the whole image
    (and its mirror image when ``flip``; the softmax outputs are averaged)."""
    segment = _as_segment(model)
    probs, var = segment(images, uncertainty)
    if flip:
        probs = (probs + segment(images.flip(-1), False).probs.flip(-1)) / 2
    return Prediction(probs, var)


@torch.no_grad()
def predict_sliding(
    model: DeepLabV3Plus | Segment,
    images: Tensor,
    window: int,
    stride: int,
    flip: bool = False,
    uncertainty: bool = False,
) -> Prediction:
    """images: [B, 3, H, W] in [0, 1]. Windows of ``window`` px every ``stride`` px cover the
    image (the last one flush with the border; an image smaller than a window is padded by
    reflection); overlapping outputs are averaged."""
    b, _, h, w = images.shape
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    padded = F.pad(images, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else images
    ph, pw = padded.shape[-2:]
    probs = count = var = None
    for top in _starts(ph, window, stride):
        for left in _starts(pw, window, stride):
            crop = padded[..., top:top + window, left:left + window]
            part = predict_whole(model, crop, flip, uncertainty)
            if probs is None:
                probs = images.new_zeros(b, part.probs.shape[1], ph, pw)
                count = images.new_zeros(1, 1, ph, pw)
                var = images.new_zeros(b, 1, ph, pw) if uncertainty else None
            probs[..., top:top + window, left:left + window] += part.probs
            count[..., top:top + window, left:left + window] += 1
            if uncertainty:
                var[..., top:top + window, left:left + window] += part.uncertainty
    probs = (probs / count)[..., :h, :w]
    return Prediction(probs, (var / count)[..., :h, :w] if uncertainty else None)


def _starts(length: int, window: int, stride: int) -> list[int]:
    steps = max(math.ceil((length - window) / stride), 0) + 1
    return sorted({min(i * stride, length - window) for i in range(steps)})
