"""Predict images with a checkpoint: masks, overlays and uncertainty heatmaps."""

from __future__ import annotations

from pathlib import Path

import torch

from prcl.data.io import read_image
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.distributed import select_device
from prcl.errors import DataError
from prcl.evaluation import predict
from prcl.viz import heatmap, mask_image, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def expand_images(inputs: list[str | Path]) -> list[Path]:
    """Image files, and the image files inside folders (sorted); a missing path is an error."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"{item} does not exist: give image files or folders of images")
    if not found:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return found


@torch.no_grad()
def predict_files(checkpoint: str | Path, inputs: list[str | Path], out_dir: str | Path,
                  which: str = "teacher") -> list[Path]:
    """Write ``<name>_mask.png`` (palette PNG), ``<name>_overlay.png`` and
    ``<name>_uncertainty.png`` (mean sigma^2 per pixel) for every input image."""
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint), which)
    device = select_device(cfg.train.device)
    model = model.to(device).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in expand_images(inputs):
        image = read_image(path)
        pred = predict(model, image[None].to(device), cfg.eval, uncertainty=True)
        mask = pred.probs[0].argmax(0).cpu()
        files = {
            "mask": mask_image(mask),
            "overlay": overlay(image, mask),
            "uncertainty": heatmap(pred.uncertainty[0, 0]),
        }
        for kind, picture in files.items():
            target = out / f"{path.stem}_{kind}.png"
            picture.save(target)
            written.append(target)
    return written
