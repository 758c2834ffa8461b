"""CamVid as the SegNet tutorial distributes it (docs/data.md).

Layout (``data.root`` is the ``CamVid`` folder)::

    train/<name>.png   trainannot/<name>.png     367 images
    val/<name>.png     valannot/<name>.png       101 images
    test/<name>.png    testannot/<name>.png      233 images

Images are 480x360 RGB PNGs; label PNGs hold class indices 0-10 and 11 for void pixels, which
are ignored. The class names are not stored with the data: they come from the config
(``data.class_names``; the built-in ``camvid_*`` configs list the SegNet tutorial's 11).
``data.train_split`` and ``data.val_split`` name the folders (``data.val_split=test`` scores
the test split).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from prcl.data.io import IGNORE_INDEX, broken_link_problem, broken_links, list_files
from prcl.data.problems import raise_if_any
from prcl.data.samples import Sample

VOID = 11
"""The label value of CamVid's void pixels (SegNet tutorial), read as ignore."""
LABEL_SUFFIX = "annot"


@cache
def camvid_lut(num_classes: int) -> np.ndarray:
    """int16 [256]: stored value -> class (0..num_classes-1 as they are, VOID -> 255 ignore,
    anything else -1, an invalid value)."""
    lut = np.full(256, -1, dtype=np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[VOID] = IGNORE_INDEX
    return lut


class CamVidLayout:
    """The files of CamVid in the SegNet tutorial's layout."""

    def __init__(self, root: str | Path, class_names: list[str] | None,
                 train_split: str = "train", val_split: str = "val") -> None:
        self.root = Path(root).expanduser()
        self.splits = {"train": train_split, "val": val_split}
        self.images: dict[str, dict[str, Path]] = {}
        problems = []
        if not class_names:
            problems.append("data.class_names is empty: CamVid's label files hold class indices "
                            "without names; list them in the config (the built-in camvid_46 "
                            "config lists the SegNet tutorial's 11)")
        elif len(class_names) > VOID:
            problems.append(f"data.class_names lists {len(class_names)} classes; CamVid's label "
                            f"value {VOID} is void, so at most {VOID} classes fit")
        self.class_names = list(class_names or [])
        if not self.root.is_dir():
            problems.append(f"{self.root}: dataset root not found; set data.root to the CamVid "
                            "folder (the one holding train/, trainannot/, val/, valannot/)")
        else:
            for split, folder in self.splits.items():
                problems += self._scan(split, folder)
        raise_if_any(problems)

    def _scan(self, split: str, folder: str) -> list[str]:
        image_dir, label_dir = self.root / folder, self.root / f"{folder}{LABEL_SUFFIX}"
        missing = [f"{d}: folder not found; copy the SegNet tutorial's CamVid/{d.name}/ there"
                   for d in (image_dir, label_dir) if not d.is_dir()]
        if missing:
            return missing
        self.images[split] = {p.stem: p for p in list_files(image_dir, (".png",))}
        if not self.images[split]:
            return [f"{image_dir}: no images (*.png) found"]
        return [broken_link_problem(p) for p in broken_links(image_dir, (".png",))]

    def train_ids(self) -> list[str]:
        return list(self.images["train"])

    def val_ids(self) -> list[str]:
        return list(self.images["val"])

    def labelled_candidates(self) -> list[str]:
        """Every training image: each has a label file."""
        return self.train_ids()

    def sample(self, image_id: str, split: str) -> Sample:
        folder = self.splits[split]
        image = self.images[split].get(image_id, self.root / folder / f"{image_id}.png")
        label = self.root / f"{folder}{LABEL_SUFFIX}" / f"{image_id}.png"
        classes = len(self.class_names)
        return Sample(image_id, image, label, lut=camvid_lut(classes),
                      lut_name=f"CamVid labels (0-{classes - 1}, {VOID} void)")
