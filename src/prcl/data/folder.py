"""Your own data: a folder of images, index masks and a class-names file (docs/method.md 1).

Layout (``data.root``)::

    classes.txt                 one class name per line; line i (from 0) is class i
    images/<split>/<name>.jpg   (or .jpeg .png .bmp .tif .tiff .webp), split = train / val
    masks/<split>/<name>.png    grayscale or palette PNG: class index per pixel, 255 = ignore

Every validation image needs a mask. A training image without a mask can only be unlabelled:
generated splits draw the labelled images from those that have one.
"""

from __future__ import annotations

from pathlib import Path

from prcl.data.io import (
    IGNORE_INDEX,
    IMAGE_SUFFIXES,
    broken_link_problem,
    broken_links,
    list_files,
)
from prcl.data.problems import raise_if_any
from prcl.data.samples import Sample

CLASS_FILE = "classes.txt"
LOSSY_MASK_SUFFIXES = (".jpg", ".jpeg", ".webp")


def read_class_names(path: Path) -> tuple[list[str], list[str]]:
    """(class names, problems) from a class-names file: one name per non-empty line."""
    if not path.is_file():
        return [], [f"{path}: class-names file not found; write one class name per line "
                    "(line 1 is class 0, usually 'background')"]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    problems = []
    if len(names) < 2:
        problems.append(f"{path}: lists {len(names)} class(es); a segmentation needs at least 2")
    if len(names) > IGNORE_INDEX:
        problems.append(f"{path}: lists {len(names)} classes; at most {IGNORE_INDEX} fit in a "
                        "mask whose value 255 means ignore")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"{path}: class names {', '.join(duplicates)} appear more than once")
    return names, problems


class FolderLayout:
    """The files of a user's folder dataset."""

    def __init__(self, root: str | Path, train_split: str = "train", val_split: str = "val"):
        self.root = Path(root).expanduser()
        self.splits = {"train": train_split, "val": val_split}
        self.images: dict[str, dict[str, Path]] = {}
        self.masks: dict[str, dict[str, Path]] = {}
        if not self.root.is_dir():
            raise_if_any([f"{self.root}: dataset root not found; set data.root to the folder "
                          f"holding {CLASS_FILE}, images/ and masks/"])
        self.class_names, problems = read_class_names(self.root / CLASS_FILE)
        for split, folder in self.splits.items():
            problems += self._scan(split, folder)
        raise_if_any(problems)

    def _scan(self, split: str, folder: str) -> list[str]:
        image_dir, mask_dir = self.root / "images" / folder, self.root / "masks" / folder
        if not image_dir.is_dir():
            flat = (self.root / "images").is_dir() and any(
                p.suffix.lower() in IMAGE_SUFFIXES for p in (self.root / "images").iterdir()
            )
            hint = " (move the images into images/train/ and images/val/)" if flat else ""
            return [f"{image_dir}: folder not found{hint}"]
        image_links = broken_links(image_dir, IMAGE_SUFFIXES)
        mask_links = broken_links(mask_dir, (".png",)) if mask_dir.is_dir() else []
        problems = [broken_link_problem(p) for p in [*image_links, *mask_links]]
        images: dict[str, Path] = {}
        for path in list_files(image_dir, IMAGE_SUFFIXES):
            if path.stem in images:
                problems.append(f"{path}: two images named '{path.stem}' ({images[path.stem].name}"
                                f" and {path.name}); keep one")
            images[path.stem] = path
        masks = {p.stem: p for p in list_files(mask_dir, (".png",))} if mask_dir.is_dir() else {}
        problems += [f"{p}: mask has no image in {image_dir}; add the image or remove the mask"
                     for stem, p in masks.items()
                     if stem not in images and stem not in {i.stem for i in image_links}]
        lossy = list_files(mask_dir, LOSSY_MASK_SUFFIXES) if mask_dir.is_dir() else []
        problems += [f"{p}: masks must be PNG (JPEG compression changes the class values "
                     "near every edge); save it as a lossless PNG" for p in lossy]
        if not masks:
            problems.append(f"{mask_dir}: no masks (*.png) found; {split} needs labelled images")
        self.images[split], self.masks[split] = images, masks
        return problems

    def train_ids(self) -> list[str]:
        return list(self.images["train"])

    def val_ids(self) -> list[str]:
        return list(self.images["val"])

    def labelled_candidates(self) -> list[str]:
        """Training images that have a mask."""
        return [i for i in self.train_ids() if i in self.masks["train"]]

    def sample(self, image_id: str, split: str) -> Sample:
        folder = self.splits[split]
        image = self.images[split].get(image_id, self.root / "images" / folder / f"{image_id}.jpg")
        mask = self.masks[split].get(image_id, self.root / "masks" / folder / f"{image_id}.png")
        return Sample(image_id, image, mask)
