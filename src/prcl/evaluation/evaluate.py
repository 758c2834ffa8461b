"""Evaluate a network on a labelled dataset: full-resolution predictions, one confusion
matrix, mIoU. With several processes each evaluates a shard and the matrices are summed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset

from prcl.config import EvalConfig
from prcl.data.io import IGNORE_INDEX
from prcl.errors import DataError
from prcl.evaluation.inference import Prediction, Segment, predict_sliding, predict_whole
from prcl.evaluation.metrics import ConfusionMatrix, Scores
from prcl.models import DeepLabV3Plus


def predict(model: DeepLabV3Plus | Segment, images: torch.Tensor, cfg: EvalConfig,
            uncertainty: bool = False) -> Prediction:
    """Whole-image or sliding-window prediction as ``cfg.mode`` says, by the network or any
    ``Segment`` (an exported model)."""
    if cfg.mode == "sliding":
        return predict_sliding(model, images, cfg.window, cfg.stride, cfg.flip, uncertainty)
    return predict_whole(model, images, cfg.flip, uncertainty)


@contextlib.contextmanager
def tuned_for(mode: str) -> Iterator[None]:
    """cuDNN's autotuning (``torch.backends.cudnn.benchmark``, on for training) off while
    whole images are predicted: it times every algorithm for each new input shape, and the
    validation images come in hundreds of sizes (VOC's 1,449 images), so tuning would cost
    more than the images. Sliding windows all have one size and keep it."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = saved and mode == "sliding"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


@torch.no_grad()
def evaluate(
    model: DeepLabV3Plus,
    dataset: Dataset,
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Scores:
    """mIoU of ``model`` (put in eval mode) over ``dataset`` of (image [3, H, W] in [0, 1],
    label [H, W]) pairs. Under torch.distributed, rank r takes images r, r + W, ... and the
    confusion matrices are summed over ranks, so every rank returns the same scores."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    shard = Subset(dataset, range(rank, len(dataset), world))
    loader = DataLoader(shard, batch_size=1, num_workers=num_workers)
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, device)
    with tuned_for(cfg.mode):
        for image, label in loader:
            probs = predict(model, image.to(device), cfg).probs
            confusion.update(probs.argmax(1), label.to(device))
    if world > 1:
        dist.all_reduce(confusion.matrix)
    model.train(was_training)
    if not confusion.matrix.sum():
        raise DataError(f"the {len(dataset)} validation masks hold no labelled pixel (all "
                        f"{IGNORE_INDEX}, ignore): there is nothing to score; check the masks "
                        "with `prcl check-data`")
    return confusion.scores()
