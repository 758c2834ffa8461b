"""Full-resolution inference: the whole image (VOC) or a sliding window (Cityscapes).

The authors evaluate a random 321x321 crop of each validation image (METHOD.md section 9);
here every pixel of every validation image is predicted.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from prcl.data import normalize
from prcl.models import DeepLabV3Plus


class Prediction(NamedTuple):
    """probs: [B, C, H, W] softmax at image size. uncertainty: [B, 1, H, W] the mean over
    dimensions of sigma^2 at image size, or None when not asked for."""

    probs: Tensor
    uncertainty: Tensor | None


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def predict_whole(
    model: DeepLabV3Plus, images: Tensor, flip: bool = False, uncertainty: bool = False
) -> Prediction:
    """images: [B, 3, H, W] in [0, 1]. The network sees the whole image (and its mirror
    image when ``flip``; the softmax outputs are averaged)."""
    size = images.shape[-2:]
    out = model(normalize(images), representation=uncertainty)
    probs = _upsample(out.logits, size).softmax(1)
    if flip:
        mirrored = model(normalize(images.flip(-1)), representation=False).logits
        probs = (probs + _upsample(mirrored, size).softmax(1).flip(-1)) / 2
    var = _upsample(out.var.float().mean(1, keepdim=True), size) if uncertainty else None
    return Prediction(probs, var)


@torch.no_grad()
def predict_sliding(
    model: DeepLabV3Plus,
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
