"""`prcl check-data`: read every file a config would train on and report all problems at once.

The report gives image counts per split, the class histogram (pixels per class) of the
labelled and validation masks, notes (warnings that do not stop training) and every problem:
missing folders or files, a split that does not fit the data, unreadable images, masks of the
wrong size or with values outside the classes and 255.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prcl.config import DataConfig
from prcl.data.build import resolve
from prcl.data.io import IGNORE_INDEX, read_image
from prcl.data.samples import Sample, load_pair
from prcl.errors import DataError

SPLITS = ("labelled", "unlabelled", "val")


@dataclass
class DataReport:
    dataset: str
    root: str
    class_names: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    """Images per split: labelled, unlabelled, val."""
    histogram: dict[str, np.ndarray] = field(default_factory=dict)
    """Split (labelled, val) -> int64 [num_classes + 1]: pixels per class, then ignored."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _present(sample: Sample, need_mask: bool) -> bool:
    """Whether the files exist (missing ones are already reported by the split check)."""
    return sample.image.is_file() and (not need_mask or (sample.mask and sample.mask.is_file()))


def _histogram(samples: list[Sample], num_classes: int, problems: list[str]) -> np.ndarray:
    """Pixels per class (+ ignore last) over every readable pair; errors go to problems."""
    counts = np.zeros(num_classes + 1, dtype=np.int64)
    for sample in samples:
        if not _present(sample, need_mask=True):
            continue
        try:
            _, label = load_pair(sample, num_classes)
        except DataError as error:
            problems.append(str(error))
            continue
        values = label.numpy().ravel()
        values = np.where(values == IGNORE_INDEX, num_classes, values)
        counts += np.bincount(values, minlength=num_classes + 1)
    return counts


def check_data(
    cfg: DataConfig, progress: Callable[[str], None] | None = None
) -> DataReport:
    """Check every file of the dataset cfg describes; collect all problems (never raises
    DataError). ``progress`` receives a line before each pass over the files."""
    found = resolve(cfg)
    report = DataReport(cfg.dataset, str(found.root), list(found.class_names),
                        problems=list(found.problems), notes=list(found.notes))
    for split in SPLITS:
        report.counts[split] = len(getattr(found, split))
    if found.labelled and not found.unlabelled:
        report.notes.append(f"every training image is labelled (data.num_labels="
                            f"{cfg.num_labels}): only train.method=supervised trains on this "
                            "split; the semi-supervised methods need unlabelled images")
    num_classes = len(found.class_names)
    if not num_classes:
        return report
    for split in ("labelled", "val"):
        if progress:
            progress(f"reading {report.counts[split]} {split} images and masks")
        report.histogram[split] = _histogram(getattr(found, split), num_classes, report.problems)
        read_pixels = int(report.histogram[split].sum())  # ignore included
        if read_pixels and not report.histogram[split][:num_classes].sum():
            purpose = "learn" if split == "labelled" else "score"
            report.problems.append(
                f"{found.root}: the {report.counts[split]} {split} masks hold no labelled pixel "
                f"(all {IGNORE_INDEX}, ignore): nothing to {purpose}; check how the masks were "
                "written")
    if progress:
        progress(f"reading {report.counts['unlabelled']} unlabelled images")
    for sample in found.unlabelled:
        if _present(sample, need_mask=False):
            try:
                read_image(sample.image)
            except DataError as error:
                report.problems.append(str(error))
    return report


def format_report(report: DataReport) -> str:
    """The report as text: counts, a class histogram table, notes, then every problem."""
    lines = [f"dataset: {report.dataset}  root: {report.root}"]
    lines.append("images: " + ", ".join(f"{s} {report.counts.get(s, 0)}" for s in SPLITS))
    if any(h.sum() for h in report.histogram.values()):
        splits = list(report.histogram)
        lines.append("")
        lines.append(f"{'class':<20}" + "".join(f"{s + ' pixels':>18}{'%':>7}" for s in splits))
        names = [*report.class_names, f"(ignore {IGNORE_INDEX})"]
        totals = {s: max(int(report.histogram[s].sum()), 1) for s in splits}
        for index, name in enumerate(names):
            row = f"{index if index < len(report.class_names) else '':>3} {name:<16}"
            for s in splits:
                n = int(report.histogram[s][index])
                row += f"{n:>18,}{100 * n / totals[s]:>7.2f}"
            lines.append(row)
    for note in report.notes:
        lines.append(f"note: {note}")
    lines.append("")
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"  {p}" for p in report.problems]
    else:
        lines.append("no problems found")
    return "\n".join(lines)
