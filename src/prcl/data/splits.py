"""Labelled / unlabelled / validation split lists in the authors' layout (docs/method.md 1).

    <split_dir>/<num_labels>/<seed>/labeled_filename.txt     ids of the labelled images
    <split_dir>/<num_labels>/<seed>/unlabeled_filename.txt   ids of the unlabelled images
    <split_dir>/<num_labels>/<seed>/valid_filename.txt       validation ids (optional)

One id per line (VOC: '2007_000033'; Cityscapes: 'aachen_000000_000019_leftImg8bit').
Generated splits are a seeded permutation of the sorted candidate ids, so the same
(ids, num_labels, seed) always gives the same lists on any machine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prcl.data.samples import Sample
from prcl.errors import DataError
from prcl.files import atomic_write

SPLIT_FILES = {
    "labelled": "labeled_filename.txt",
    "unlabelled": "unlabeled_filename.txt",
    "val": "valid_filename.txt",
}


@dataclass
class Split:
    labelled: list[str]
    unlabelled: list[str]
    val: list[str] | None = None
    """Validation ids from valid_filename.txt; None: the dataset's own validation list."""
    source: str = "generated"
    """Where the lists come from (a folder, or 'generated'), for messages."""


def split_folder(split_dir: str | Path, num_labels: int, seed: int) -> Path:
    return Path(split_dir).expanduser() / str(num_labels) / str(seed)


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_split(split_dir: str | Path, num_labels: int, seed: int) -> Split:
    """Read <split_dir>/<num_labels>/<seed>/*_filename.txt (valid_filename.txt optional)."""
    folder = split_folder(split_dir, num_labels, seed)
    if not folder.is_dir():
        base = Path(split_dir).expanduser()
        found = sorted(p.relative_to(base).as_posix() for p in base.glob("*/*") if p.is_dir())
        have = f"; found {', '.join(found[:10])}" if found else ""
        raise DataError(
            f"{folder}: split folder not found (expected <split_dir>/<num_labels>/<seed>{have}); "
            "set data.num_labels and data.split_seed to match, or create it with `prcl splits`"
        )
    lists = {}
    for role, name in SPLIT_FILES.items():
        path = folder / name
        if path.is_file():
            lists[role] = _read_ids(path)
        elif role != "val":
            raise DataError(f"{path}: split list not found; every split folder needs "
                            f"{SPLIT_FILES['labelled']} and {SPLIT_FILES['unlabelled']}")
    return Split(lists["labelled"], lists["unlabelled"], lists.get("val"), source=str(folder))


def generate_split(
    candidates: Sequence[str], train_ids: Sequence[str], num_labels: int, seed: int
) -> Split:
    """Draw num_labels labelled ids from candidates (seeded); every other training id is
    unlabelled. Both lists come back sorted."""
    pool = sorted(set(candidates))
    if not 0 < num_labels <= len(pool):
        raise DataError(
            f"data.num_labels={num_labels}: choose between 1 and {len(pool)}, the number of "
            "training images with a mask"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    labelled = sorted(pool[i] for i in order[:num_labels])
    chosen = set(labelled)
    unlabelled = sorted(i for i in set(train_ids) if i not in chosen)
    return Split(labelled, unlabelled)


def write_split(split: Split, split_dir: str | Path, num_labels: int, seed: int,
                val_ids: Sequence[str] | None = None, overwrite: bool = False) -> Path:
    """Write a split in the authors' layout; refuse to change existing lists unless told to,
    and refuse ids that would not read back as they are (``unlistable_id``)."""
    folder = split_folder(split_dir, num_labels, seed)
    lists = {"labelled": split.labelled, "unlabelled": split.unlabelled}
    if val_ids is not None:
        lists["val"] = list(val_ids)
    for role, ids in lists.items():
        bad = next((i for i in ids if unlistable_id(i)), None)
        if bad is not None:
            raise DataError(f"image id {bad!r} ({role}) holds a line break or starts or ends "
                            f"with a space, so {SPLIT_FILES[role]} (one id per line) cannot "
                            "list it; rename the image's files")
    texts = {SPLIT_FILES[role]: "".join(f"{i}\n" for i in ids) for role, ids in lists.items()}
    for name, text in texts.items():
        path = folder / name
        if path.is_file() and path.read_text() != text and not overwrite:
            raise DataError(f"{path}: exists with other ids; pass --overwrite to replace it, or "
                            "choose another output folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        atomic_write(folder / name, lambda f, t=text: f.write(t.encode()))
    return folder


def unlistable_id(image_id: str) -> bool:
    """Whether ``image_id`` would read back from a split list as something else: a line
    break inside, or spaces around (``_read_ids`` strips each line)."""
    return len(image_id.splitlines()) != 1 or image_id.strip() != image_id


def _duplicates(ids: Sequence[str]) -> list[str]:
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def split_problems(
    split: Split, num_labels: int, sample: Callable[[str, str], Sample]
) -> list[str]:
    """Every problem with a split: repeated ids, labelled ids also unlabelled, a labelled
    count other than num_labels, and ids whose image (or, labelled, mask) is not on disk.
    ``sample(id, 'train')`` names an id's files."""
    where = split.source
    problems = [
        f"{where}: {SPLIT_FILES[role]} lists '{i}' more than once"
        for role in ("labelled", "unlabelled")
        for i in _duplicates(getattr(split, role))
    ]
    overlap = sorted(set(split.labelled) & set(split.unlabelled))
    if overlap:
        shown = ", ".join(overlap[:5])
        problems.append(f"{where}: {len(overlap)} id(s) are both labelled and unlabelled "
                        f"({shown}); a split must keep them apart")
    if len(set(split.labelled)) != num_labels:
        problems.append(f"{where}: {len(set(split.labelled))} labelled ids but "
                        f"data.num_labels={num_labels}; make them agree")
    if not split.labelled:
        problems.append(f"{where}: no labelled ids")
    problems += files_problems(split.labelled, "train", sample, need_mask=True)
    problems += files_problems(split.unlabelled, "train", sample, need_mask=False)
    return problems


def files_problems(
    ids: Sequence[str], split: str, sample: Callable[[str, str], Sample], need_mask: bool
) -> list[str]:
    """One line per id whose image (or mask, when need_mask) does not exist."""
    problems = []
    fix = "restore it, or remove the id from the split list"
    for image_id in ids:
        s = sample(image_id, split)
        if not s.image.is_file():
            problems.append(f"{s.image}: image of '{image_id}' ({split}) not found; {fix}")
        if need_mask and (s.mask is None or not s.mask.is_file()):
            problems.append(f"{s.mask}: mask of '{image_id}' ({split}) not found; {fix}")
    return problems
