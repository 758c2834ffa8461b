"""Pascal VOC 2012 (augmented) on disk, and its colour palette (docs/method.md 1).

Layout (``data.root`` is the VOC2012 folder)::

    JPEGImages/<id>.jpg
    SegmentationClassAug/<id>.png     grayscale class indices, 255 = ignore (10,582 + 1,449)
      or SegmentationClass/<id>.png   the official palette PNGs (indices with a colour map)
    ImageSets/Segmentation/val.txt    the 1,449 validation ids
    ImageSets/Segmentation/train_aug.txt   optional; otherwise every mask not in val.txt

The built-in synthetic dataset is written in the same layout with its own class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prcl.data.problems import raise_if_any
from prcl.data.samples import Sample
from prcl.errors import DataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
MASK_FOLDERS = ("SegmentationClassAug", "SegmentationClass")
LIST_FOLDER = Path("ImageSets") / "Segmentation"


def palette(num_classes: int) -> np.ndarray:
    """VOC's colour map: uint8 [num_classes, 3]; class i's colour spreads the bits of i over
    the high bits of red, green and blue (0 black, 1 dark red, 2 dark green, ...)."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        colours[index] = rgb
    return colours


def _read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(
            f"{path}: list not found; it comes with VOCtrainval_11-May-2012.tar "
            "(ImageSets/Segmentation), or give data.split_dir with a valid_filename.txt"
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class VOCLayout:
    """The files of a VOC-style dataset; ``sample`` names them without reading them."""

    def __init__(self, root: str | Path, class_names: tuple[str, ...] = VOC_CLASSES) -> None:
        self.root = Path(root).expanduser()
        self.class_names = list(class_names)
        self.image_dir = self.root / "JPEGImages"
        self.mask_dir = self._find_mask_dir()
        problems = []
        if not self.root.is_dir():
            problems.append(f"{self.root}: dataset root not found; set data.root to the VOC2012 "
                            "folder (the one holding JPEGImages/)")
        else:
            if not self.image_dir.is_dir():
                problems.append(
                    f"{self.image_dir}: folder not found; extract JPEGImages/ from "
                    f"VOCtrainval_11-May-2012.tar into {self.root}{self._nested_hint()}"
                )
            if self.mask_dir is None:
                problems.append(
                    f"{self.root / MASK_FOLDERS[0]}: folder not found (nor {MASK_FOLDERS[1]}/); "
                    f"download SegmentationClassAug.zip and extract it into {self.root}"
                )
        raise_if_any(problems)

    def _find_mask_dir(self) -> Path | None:
        for name in MASK_FOLDERS:
            if (self.root / name).is_dir():
                return self.root / name
        return None

    def _nested_hint(self) -> str:
        for nested in ("VOC2012", "VOCdevkit/VOC2012"):
            if (self.root / nested / "JPEGImages").is_dir():
                return f" (or did you mean data.root={self.root / nested}?)"
        return ""

    def val_ids(self) -> list[str]:
        """The official validation ids (ImageSets/Segmentation/val.txt)."""
        return _read_id_list(self.root / LIST_FOLDER / "val.txt")

    def train_ids(self) -> list[str]:
        """train_aug.txt when present, else every mask on disk that is not a validation id."""
        listed = self.root / LIST_FOLDER / "train_aug.txt"
        if listed.is_file():
            return _read_id_list(listed)
        val = set(self.val_ids())
        return sorted(p.stem for p in self.mask_dir.glob("*.png") if p.stem not in val)

    def labelled_candidates(self) -> list[str]:
        """Training ids that may be labelled: all of them (each has a mask)."""
        return self.train_ids()

    def sample(self, image_id: str, split: str) -> Sample:
        """The files of one id (split does not matter for VOC)."""
        image = self.image_dir / f"{image_id}.jpg"
        return Sample(image_id, image, self.mask_dir / f"{image_id}.png")
