"""Mean IoU from one confusion matrix over the whole validation set (docs/method.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Counts ``matrix[target, prediction]`` over every labelled pixel (255 is skipped).

    ``update(prediction [...], target [...])`` with int tensors of the same shape, any device.
    Several processes each fill their own matrix and sum them (``all_reduce``) before
    ``scores()``.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: Tensor, target: Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target "
                             f"{tuple(target.shape)} differ in shape")
        keep = target != IGNORE_INDEX
        target, prediction = target[keep].long(), prediction[keep].long()
        if target.numel() and int(target.max()) >= self.num_classes:
            raise ValueError(f"target holds class {int(target.max())} but there are only "
                             f"{self.num_classes} classes (and 255 for ignore)")
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).view_as(self.matrix)

    def scores(self) -> Scores:
        """Per-class IoU = TP / (TP + FP + FN); mIoU averages the classes that occur in the
        targets or the predictions (a class absent from both has no IoU)."""
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        present = ~iou.isnan()
        miou = float(iou[present].mean()) if present.any() else 0.0
        accuracy = float(tp.sum() / m.sum().clamp(min=1))
        return Scores(miou=miou, iou=iou.tolist(), pixel_accuracy=accuracy)


@dataclass
class Scores:
    miou: float
    """Mean IoU in [0, 1]."""
    iou: list[float]
    """IoU per class; NaN for a class absent from targets and predictions."""
    pixel_accuracy: float

    def table(self, class_names: list[str] | None = None) -> str:
        """A fixed-width table: one row per class, then the mean, in percent."""
        names = class_names or [f"class {i}" for i in range(len(self.iou))]
        width = max(len(n) for n in [*names, "mIoU"])
        rows = [f"{'class':<{width}}  IoU (%)"]
        rows += [f"{n:<{width}}  {v * 100:7.2f}" if v == v else f"{n:<{width}}      --"
                 for n, v in zip(names, self.iou, strict=True)]
        rows.append(f"{'mIoU':<{width}}  {self.miou * 100:7.2f}")
        return "\n".join(rows)
