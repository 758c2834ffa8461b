"""Per-sample transforms for DataLoader workers, and the network's input normalisation.

The labelled pipeline (docs/method.md 7.5 applied to labelled images, as in the authors' code) and
the unlabelled crop reuse the batched functions of ``prcl.data.unlabelled`` on a batch of one,
so each augmentation is written once. Randomness comes from torch's global generator, which
the DataLoader seeds differently in every worker and epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prcl.data.unlabelled import device_constant, photometric, random_scale_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD) -> tuple[Tensor, Tensor]:
    """(mean, std) shaped to broadcast against [3, H, W] or [B, 3, H, W] ``images``, made
    once per device and dtype (``device_constant``)."""
    shape = (3, 1, 1) if images.dim() == 3 else (1, 3, 1, 1)
    return (device_constant(tuple(mean), images.device, images.dtype, shape),
            device_constant(tuple(std), images.device, images.dtype, shape))


def normalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Per-channel (x - mean) / std of [3, H, W] or [B, 3, H, W] images in [0, 1]: ImageNet's
    statistics, which every prcl network is trained with, unless given."""
    mean_t, std_t = _stats(images, mean, std)
    return (images - mean_t) / std_t


def denormalize(images: Tensor) -> Tensor:
    """The inverse of ``normalize``: back to [0, 1] images, same shapes."""
    mean, std = _stats(images)
    return images * std + mean


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) times ``factor``, rounded, at least 1 pixel each."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def rescale_image(image: Tensor, factor: float) -> Tensor:
    """``data.image_scale``: image [3, H, W] in [0, 1] resized by ``factor`` (bilinear,
    antialiased when shrinking) to [3, h, w] of ``scaled_size``; the image itself for 1."""
    if factor == 1:
        return image
    size = scaled_size(*image.shape[-2:], factor)
    resized = F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                            align_corners=False)
    return resized[0].clamp_(0, 1)


def rescale_mask(mask: Tensor, factor: float) -> Tensor:
    """``data.image_scale`` for a mask [H, W] of class indices: nearest neighbour (pixel
    centres, ``nearest-exact``), so no value is invented, to the size ``rescale_image``
    gives its image."""
    if factor == 1:
        return mask
    size = scaled_size(*mask.shape, factor)
    resized = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
    return resized[0, 0].to(mask.dtype)


class LabelledTransform:
    """Random scale, pad, crop, colour jitter, blur and flip of one labelled pair
    (docs/method.md 7.5).

    (image [3, H, W], label [H, W]) -> (image [3, crop, crop], label [crop, crop]); padding is
    reflected in the image and 255 in the label.
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float]) -> None:
        self.crop_size = crop_size
        self.scale_range = scale_range

    def __call__(self, image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
        images, labels = image[None], label[None]
        confidence = torch.ones(labels.shape, dtype=image.dtype)
        images, labels, _ = random_scale_crop(
            images, labels, confidence, self.crop_size, self.scale_range, hflip=True
        )
        return photometric(images)[0], labels[0]


class RandomCrop:
    """Random scale (default none), reflection pad and crop of one unlabelled image.

    image [3, H, W] -> [3, crop, crop]: geometry only, so that the teacher sees the image as
    it is; the random scale of docs/method.md 7.3 comes later, on the batch.
    """

    def __init__(self, crop_size: int, scale_range: tuple[float, float] = (1.0, 1.0)) -> None:
        self.crop_size = crop_size
        self.scale_range = scale_range

    def __call__(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        labels = torch.zeros(1, h, w, dtype=torch.long)
        confidence = torch.zeros(1, h, w, dtype=image.dtype)
        images, _, _ = random_scale_crop(
            image[None], labels, confidence, self.crop_size, self.scale_range
        )
        return images[0]
