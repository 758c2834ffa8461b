"""Cityscapes on disk, labelIds mapped to the 19 train ids (docs/method.md 1 and 9).

Images: ``<root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``; an image's
id is its file name without ``.png`` (as in the authors' split lists). Labels, first found:

    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png   (already train ids)
    <root>/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png        (mapped here)
    <root>/<split>/<city>/<stem>_gtFine_labelTrainIds.png          (the authors' layout)
    <root>/<split>/<city>/<stem>_gtFine_labelIds.png

Validation uses the official ``val`` split (500 images); the test split has no public labels.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from prcl.data.io import IGNORE_INDEX
from prcl.data.problems import raise_if_any
from prcl.data.samples import Sample

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
LABEL_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
    25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
"""The 19 evaluated classes of cityscapesScripts' labels.py; every other labelId is ignored."""
NUM_LABEL_IDS = 34
TEST_CITIES = frozenset({"berlin", "bielefeld", "bonn", "leverkusen", "mainz", "munich"})
IMAGE_SUFFIX = "_leftImg8bit"


@cache
def label_id_lut() -> np.ndarray:
    """int16 [256]: labelId -> train id (255 for the unevaluated ids 0-33, -1 above 33)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:NUM_LABEL_IDS] = IGNORE_INDEX
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def city_of(image_id: str) -> str:
    """'aachen_000013_000019_leftImg8bit' -> 'aachen'."""
    return image_id.split("_", 1)[0]


class CityscapesLayout:
    """The files of a Cityscapes dataset in the official or the authors' layout."""

    def __init__(self, root: str | Path, train_split: str = "train", val_split: str = "val"):
        self.root = Path(root).expanduser()
        self.class_names = list(CITYSCAPES_CLASSES)
        self.splits = {"train": train_split, "val": val_split}
        self._index: dict[str, dict[str, Path]] = {}
        problems = []
        if not self.root.is_dir():
            problems.append(f"{self.root}: dataset root not found; set data.root to the folder "
                            "holding leftImg8bit/ and gtFine/")
        else:
            for split in self.splits.values():
                problems += self._split_problems(split)
        raise_if_any(problems)

    def _split_problems(self, split: str) -> list[str]:
        images = self.root / "leftImg8bit" / split
        if not images.is_dir():
            return [f"{images}: folder not found; extract leftImg8bit_trainvaltest.zip into "
                    f"{self.root}"]
        if not ((self.root / "gtFine" / split).is_dir() or (self.root / split).is_dir()):
            return [f"{self.root / 'gtFine' / split}: label folder not found (nor the authors' "
                    f"{self.root / split}); extract gtFine_trainvaltest.zip into {self.root}"]
        return []

    def _images(self, split: str) -> dict[str, Path]:
        """id -> image path for every image of a split folder (scanned once)."""
        folder = self.splits[split]
        if folder not in self._index:
            paths = sorted((self.root / "leftImg8bit" / folder).glob(f"*/*{IMAGE_SUFFIX}.png"))
            self._index[folder] = {p.stem: p for p in paths}
        return self._index[folder]

    def train_ids(self) -> list[str]:
        return list(self._images("train"))

    def val_ids(self) -> list[str]:
        return list(self._images("val"))

    def labelled_candidates(self) -> list[str]:
        """Training ids whose label file exists."""
        return [i for i in self.train_ids() if self._label(i, "train")[0].is_file()]

    def _label(self, image_id: str, split: str) -> tuple[Path, bool]:
        """(label path, holds labelIds) of an id; the official labelIds path when none exists."""
        folder, city = self.splits[split], city_of(image_id)
        stem = image_id.removesuffix(IMAGE_SUFFIX)
        candidates = [
            (base / folder / city / f"{stem}_gtFine_{kind}.png", kind == "labelIds")
            for base in (self.root / "gtFine", self.root)
            for kind in ("labelTrainIds", "labelIds")
        ]
        existing = [c for c in candidates if c[0].is_file()]
        return existing[0] if existing else candidates[1]

    def sample(self, image_id: str, split: str) -> Sample:
        """The files of one id in the 'train' or 'val' split."""
        folder = self.splits[split]
        image = self._images(split).get(
            image_id, self.root / "leftImg8bit" / folder / city_of(image_id) / f"{image_id}.png"
        )
        mask, label_ids = self._label(image_id, split)
        if label_ids:
            return Sample(image_id, image, mask, lut=label_id_lut(), lut_name="labelIds")
        return Sample(image_id, image, mask)
