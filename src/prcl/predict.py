"""Predict images with a checkpoint or an exported ONNX file: masks, overlays and uncertainty
heatmaps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from prcl.config import EvalConfig
from prcl.data.io import read_image
from prcl.data.transforms import rescale_image
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.distributed import select_device
from prcl.errors import DataError
from prcl.evaluation import Prediction, Segment, predict
from prcl.files import atomic_write
from prcl.models import DeepLabV3Plus
from prcl.runtime import OnnxSegment
from prcl.viz import heatmap, mask_image, overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
OUTPUT_KINDS = ("mask", "overlay", "uncertainty")
"""What is written for each image, as ``<name>_<kind>.png``."""


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


def output_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct file-name stem per image: its own stem, or, where several images share one
    (a/same.jpg, a/same.png, b/same.jpg), its path below their common folder with '__' for
    '/' (a__same.jpg, a__same.png, b__same.jpg)."""
    resolved = {p: p.resolve() for p in paths}
    stems = [p.stem for p in paths]
    clashing = {s for s in stems if stems.count(s) > 1}
    if not clashing:
        return {p: p.stem for p in paths}
    common = Path(os.path.commonpath([str(r.parent) for r in resolved.values()]))
    return {p: "__".join(resolved[p].relative_to(common).parts) if p.stem in clashing
            else p.stem for p in paths}


def output_paths(paths: list[Path], out: Path) -> dict[Path, dict[str, Path]]:
    """Image -> kind -> the file it is written to, ``out/<name>_<kind>.png``; ``DataError``
    when one of them is an input image (the prediction would replace it, and a later image
    might be read from a prediction)."""
    inputs = {p.resolve(): p for p in paths}
    targets = {path: {kind: out / f"{name}_{kind}.png" for kind in OUTPUT_KINDS}
               for path, name in output_names(paths).items()}
    for path, files in targets.items():
        for target in files.values():
            if target.resolve() in inputs:
                raise DataError(
                    f"--out {out}: the prediction of {path} would replace the input image "
                    f"{inputs[target.resolve()]}; give an --out folder that holds no input "
                    "images")
    return targets


class PredictResult(NamedTuple):
    written: list[Path]
    failed: list[str]
    """One line per image that could not be read, naming it and why."""
    images: int
    """Images predicted."""


class Predictor(NamedTuple):
    """A network ready to predict, and how: ``eval`` settings, device, whether it gives the
    uncertainty, and the ``data.image_scale`` it was trained at."""

    segment: DeepLabV3Plus | Segment
    eval_config: EvalConfig
    device: torch.device
    uncertainty: bool
    image_scale: float


def open_predictor(source: str | Path, which: str = "teacher") -> Predictor:
    """A checkpoint's ``which`` network on its configured device, or an exported ``.onnx`` file
    in onnxruntime on the CPU."""
    if Path(source).suffix.lower() == ".onnx":
        onnx = OnnxSegment(source)
        return Predictor(onnx, onnx.eval_config, torch.device("cpu"), onnx.has_uncertainty,
                         onnx.metadata["image_scale"])
    model, cfg = model_from_checkpoint(load_checkpoint(source), which)
    device = select_device(cfg.train.device)
    return Predictor(model.to(device).eval(), cfg.eval, device, True, cfg.data.image_scale)


def predict_at_scale(predictor: Predictor, image: Tensor) -> Prediction:
    """``predict`` one image [3, H, W] resized by the scale the network was trained at
    (``data.image_scale``), its probabilities and uncertainty [1, ., H, W] brought back to the
    image's own size (bilinear)."""
    small = rescale_image(image, predictor.image_scale)[None].to(predictor.device)
    pred = predict(predictor.segment, small, predictor.eval_config,
                   uncertainty=predictor.uncertainty)
    if predictor.image_scale == 1:
        return pred
    size = image.shape[-2:]
    return Prediction(*(None if t is None else F.interpolate(t, size=size, mode="bilinear")
                        for t in pred))


@torch.no_grad()
def predict_files(source: str | Path, inputs: list[str | Path], out_dir: str | Path,
                  which: str = "teacher") -> PredictResult:
    """Write ``<name>_mask.png`` (palette PNG), ``<name>_overlay.png`` and
    ``<name>_uncertainty.png`` (mean sigma^2 per pixel; not for an ONNX file exported without
    it) for every input image, ``<name>`` from ``output_names``, with the checkpoint or ONNX
    file ``source``, each image predicted at the scale the network was trained at
    (``predict_at_scale``). An image that cannot be read is skipped and reported; the others are
    still written. Each file is written atomically (a link there is replaced, never written
    through); an output that would replace an input image is refused before any image is
    read (``output_paths``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder to write the predictions into")
    predictor = open_predictor(source, which)
    paths = expand_images(inputs)
    targets = output_paths(paths, out)
    out.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for path in paths:
        try:
            image = read_image(path)
        except DataError as exc:
            failed.append(str(exc))
            continue
        pred = predict_at_scale(predictor, image)
        mask = pred.probs[0].argmax(0).cpu()
        files = {"mask": mask_image(mask), "overlay": overlay(image, mask)}
        if predictor.uncertainty:
            files["uncertainty"] = heatmap(pred.uncertainty[0, 0])
        for kind, picture in files.items():
            atomic_write(targets[path][kind], lambda f, p=picture: p.save(f, format="PNG"))
            written.append(targets[path][kind])
    return PredictResult(written, failed, len(paths) - len(failed))
