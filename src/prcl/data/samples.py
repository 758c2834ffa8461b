"""One image with its mask, and the torch Datasets built from lists of them (docs/method.md 1).

A ``Sample`` names the files of one image: its RGB image, its label mask (``None`` for an image
that is only ever used unlabelled) and, where the stored values are not class indices
(Cityscapes labelIds), the lookup table that turns them into classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from prcl.data.io import (
    check_mask_values,
    check_same_size,
    header_size,
    read_image,
    read_mask,
    read_mask_values,
)
from prcl.data.transforms import rescale_image, rescale_mask
from prcl.errors import DataError

INSTANCE_ID_FACTOR = 1000
"""Cityscapes instance ids are class id x 1000 + instance number (cityscapesScripts)."""

PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ImageTransform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    mask: Path | None = None
    lut: np.ndarray | None = None
    """int16 [256]: stored mask value -> class index (255 ignore); -1 marks invalid values."""
    lut_name: str = ""
    """What the stored values are when a lut is given (named in errors), e.g. 'labelIds'."""


def load_label(sample: Sample, num_classes: int) -> np.ndarray:
    """The sample's mask as class indices, uint8 [H, W] (255 ignore), every value checked."""
    if sample.mask is None:
        raise DataError(f"image {sample.image} has no mask; a labelled image needs one")
    if sample.lut is None:
        mask = read_mask(sample.mask)
    else:
        values = read_mask_values(sample.mask).astype(np.int64)
        known = (values >= 0) & (values < len(sample.lut))
        mapped = np.where(known, sample.lut[np.where(known, values, 0)], -1)
        if (mapped < 0).any():
            bad = np.unique(values[mapped < 0])
            shown = ", ".join(str(v) for v in bad[:8])
            hint = ""
            if bad.max() >= INSTANCE_ID_FACTOR:
                hint = (f" Values like {bad.max()} are instance ids (class x 1000 + instance): "
                        f"this looks like an *_instanceIds.png standing where "
                        f"*_{sample.lut_name}.png belongs.")
            raise DataError(
                f"{sample.mask}: values {shown} are not valid {sample.lut_name}.{hint} Use the "
                "dataset's unmodified label files"
            )
        mask = mapped.astype(np.uint8)
    check_mask_values(mask, num_classes, sample.mask)
    return mask


def header_problems(samples: Sequence[Sample], masks: bool = True) -> list[str]:
    """One line per sample whose image or (with ``masks``) mask cannot be opened, or whose
    mask's size differs from its image's: what the files' headers tell, checked before
    training starts (``prcl check-data`` decodes every pixel)."""
    problems = []
    for sample in samples:
        try:
            size = header_size(sample.image, "image")
            if masks and sample.mask is not None:
                mask_size = header_size(sample.mask, "mask")
                if mask_size != size:
                    problems.append(
                        f"{sample.mask}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                        f"{sample.image} is {size[0]}x{size[1]}; the mask must have the "
                        "image's size")
        except DataError as exc:
            problems.append(str(exc))
    return problems


def load_pair(sample: Sample, num_classes: int,
              scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(image float32 [3, H, W] in [0, 1], label int64 [H, W]) of a labelled sample, both
    resized by ``scale`` (``data.image_scale``; ``rescale_image``, ``rescale_mask``)."""
    image = read_image(sample.image)
    mask = load_label(sample, num_classes)
    check_same_size(image, mask, sample.image, sample.mask)
    return rescale_image(image, scale), rescale_mask(torch.from_numpy(mask).long(), scale)


class LabelledDataset(Dataset):
    """(image [3, H, W], label [H, W]) pairs resized by ``scale`` as they are read, then
    optionally through a pair transform."""

    def __init__(
        self, samples: Sequence[Sample], num_classes: int, transform: PairTransform | None = None,
        scale: float = 1.0,
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.transform = transform
        self.scale = scale

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = load_pair(self.samples[index], self.num_classes, self.scale)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


class ImageDataset(Dataset):
    """Images [3, H, W] alone (the unlabelled set), resized by ``scale`` as they are read, then
    optionally through an image transform."""

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform | None = None,
                 scale: float = 1.0) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.scale = scale

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = rescale_image(read_image(self.samples[index].image), self.scale)
        return image if self.transform is None else self.transform(image)
