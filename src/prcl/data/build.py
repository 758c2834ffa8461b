"""From a ``DataConfig`` to the three datasets the trainer reads (docs/method.md 1 and 7).

``resolve`` finds the files, reads or generates the split and lists every problem;
``build_datasets`` refuses a dataset with any problem and wraps the rest in Datasets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torch.utils.data import Dataset

from prcl.config import DataConfig
from prcl.data.camvid import CamVidLayout
from prcl.data.cityscapes import CityscapesLayout
from prcl.data.folder import FolderLayout
from prcl.data.problems import DataProblems, problems_of
from prcl.data.samples import ImageDataset, LabelledDataset, Sample, header_problems
from prcl.data.splits import (
    SPLIT_FILES,
    Split,
    files_problems,
    generate_split,
    read_split,
    split_problems,
)
from prcl.data.synthetic import CLASS_NAMES, ensure_synthetic
from prcl.data.transforms import LabelledTransform, RandomCrop
from prcl.data.voc import VOCLayout
from prcl.errors import DataError


class Layout(Protocol):
    """What every dataset layout offers (VOC, Cityscapes, folder; synthetic uses VOC's)."""

    root: Path
    class_names: list[str]

    def train_ids(self) -> list[str]: ...
    def val_ids(self) -> list[str]: ...
    def labelled_candidates(self) -> list[str]: ...
    def sample(self, image_id: str, split: str) -> Sample: ...


@dataclass
class Resolved:
    """A dataset's files and split, with every problem and note found on the way."""

    root: Path = Path()
    class_names: list[str] = field(default_factory=list)
    labelled: list[Sample] = field(default_factory=list)
    unlabelled: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Warnings that do not stop training (e.g. a validation list replaced by 'val')."""


@dataclass
class DataBundle:
    """What the trainer reads. labelled: (image [3, crop, crop], label [crop, crop]) after the
    labelled pipeline; unlabelled: image [3, crop, crop] (geometry only); val: (image
    [3, H, W], label [H, W]), whole images of varying size."""

    labelled: Dataset
    unlabelled: Dataset
    val: Dataset
    num_classes: int
    class_names: list[str]
    labelled_ids: list[str]
    unlabelled_ids: list[str]
    val_ids: list[str]
    root: Path
    notes: list[str] = field(default_factory=list)


def open_layout(cfg: DataConfig) -> Layout:
    """The dataset layout named by cfg.dataset (generating the synthetic data if needed)."""
    if cfg.dataset == "synthetic":
        return VOCLayout(ensure_synthetic(cfg.synthetic, cfg.root), CLASS_NAMES)
    if not cfg.root:
        raise DataError(f"data.root is empty; set it to your {cfg.dataset} folder "
                        "(data.root=/path/to/it on the command line)")
    if cfg.dataset == "voc":
        return VOCLayout(cfg.root)
    if cfg.dataset == "cityscapes":
        return CityscapesLayout(cfg.root, cfg.train_split, cfg.val_split)
    if cfg.dataset == "camvid":
        return CamVidLayout(cfg.root, cfg.class_names, cfg.train_split, cfg.val_split)
    if cfg.dataset == "folder":
        return FolderLayout(cfg.root, cfg.train_split, cfg.val_split)
    raise DataError(f"data.dataset '{cfg.dataset}': choose voc, cityscapes, camvid, folder or "
                    "synthetic")


def load_split(cfg: DataConfig, layout: Layout) -> Split:
    """The authors' lists from cfg.split_dir, or a split generated from (num_labels, seed)."""
    if cfg.split_dir:
        return read_split(cfg.split_dir, cfg.num_labels, cfg.split_seed)
    return generate_split(layout.labelled_candidates(), layout.train_ids(), cfg.num_labels,
                          cfg.split_seed)


def _val_ids(cfg: DataConfig, layout: Layout, split: Split, notes: list[str]) -> list[str]:
    """The split's validation list, unless it is Cityscapes' test cities (no public labels)."""
    if split.val is None:
        return layout.val_ids()
    if cfg.dataset == "cityscapes":
        official = set(layout.val_ids())
        outside = [i for i in split.val if i not in official]
        if outside:
            notes.append(
                f"{split.source}/{SPLIT_FILES['val']}: {len(outside)} of {len(split.val)} ids "
                f"are not in leftImg8bit/{cfg.val_split} (the authors list test-city images, "
                f"which have no public labels); validating on the official '{cfg.val_split}' "
                f"split ({len(official)} images) instead"
            )
            return layout.val_ids()
    return split.val


def resolve(cfg: DataConfig) -> Resolved:
    """Find the dataset's files and split; collect every problem instead of stopping."""
    out = Resolved(root=Path(cfg.root))
    try:
        layout = open_layout(cfg)
        out.root, out.class_names = layout.root, layout.class_names
        split = load_split(cfg, layout)
        val_ids = _val_ids(cfg, layout, split, out.notes)
    except DataError as error:
        out.problems += problems_of(error)
        return out
    out.problems += split_problems(split, cfg.num_labels, layout.sample)
    out.problems += files_problems(val_ids, "val", layout.sample, need_mask=True)
    if not val_ids:
        out.problems.append(f"{layout.root}: no validation images found")
    out.labelled = [layout.sample(i, "train") for i in split.labelled]
    out.unlabelled = [layout.sample(i, "train") for i in split.unlabelled]
    out.val = [layout.sample(i, "val") for i in val_ids]
    return out


def build_val_dataset(cfg: DataConfig) -> tuple[LabelledDataset, list[str]]:
    """Only cfg's validation set and class names (what ``prcl evaluate`` reads): no split is
    drawn, so data.num_labels need not fit the training set. Raises DataError listing every
    missing file."""
    layout = open_layout(cfg)
    val_ids = layout.val_ids()
    problems = files_problems(val_ids, "val", layout.sample, need_mask=True)
    if not val_ids:
        problems.append(f"{layout.root}: no validation images found")
    if problems:
        raise DataProblems(problems, "run `prcl check-data` for the full report")
    samples = [layout.sample(i, "val") for i in val_ids]
    return (LabelledDataset(samples, len(layout.class_names), scale=cfg.image_scale),
            list(layout.class_names))


def build_datasets(cfg: DataConfig) -> DataBundle:
    """The labelled, unlabelled and validation datasets of cfg (docs/method.md 1, 7.5).

    Raises DataError listing every problem found (missing folders or files, a split that does
    not fit the data, files that cannot be opened, masks whose size is not their image's);
    mask values are checked as they are read, and everything in full by ``check_data``.
    """
    found = resolve(cfg)
    if not found.problems:
        found.problems += header_problems([*found.labelled, *found.val])
        found.problems += header_problems(found.unlabelled, masks=False)
    if found.problems:
        raise DataProblems(found.problems, "run `prcl check-data` for the full report")
    for note in found.notes:
        warnings.warn(note, stacklevel=2)
    num_classes = len(found.class_names)
    return DataBundle(
        labelled=LabelledDataset(found.labelled, num_classes,
                                 LabelledTransform(cfg.crop_size, cfg.scale_range),
                                 cfg.image_scale),
        unlabelled=ImageDataset(found.unlabelled, RandomCrop(cfg.crop_size), cfg.image_scale),
        val=LabelledDataset(found.val, num_classes, scale=cfg.image_scale),
        num_classes=num_classes,
        class_names=list(found.class_names),
        labelled_ids=[s.id for s in found.labelled],
        unlabelled_ids=[s.id for s in found.unlabelled],
        val_ids=[s.id for s in found.val],
        root=found.root,
        notes=found.notes,
    )
