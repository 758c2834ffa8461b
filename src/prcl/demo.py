"""The demo behind `make demo`: the supervised baseline against PRCL on the built-in dataset,
the same labelled subset, steps and labelled batch for both; PRCL also sees the unlabelled
images. Prints both mIoUs and writes one figure."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from prcl.config import load_config
from prcl.data import build_datasets
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.engine.trainer import TrainResult, train
from prcl.evaluation import predict
from prcl.viz import grid, heatmap, mask_image, to_pil_image

METHODS = ("supervised", "prcl")


def run_demo(out_dir: str | Path = "runs/demo", overrides: list[str] = (),
             progress: bool = True) -> dict[str, TrainResult]:
    """Train both methods, print ``supervised  mIoU x`` and ``prcl  mIoU y`` (percent, the
    final networks on the whole validation set) and write ``<out_dir>/demo.png``. The runs'
    folders under ``out_dir`` are the demo's own: a new demo replaces them."""
    out = Path(out_dir)
    results = {}
    for method in METHODS:
        cfg = load_config("synthetic", [*overrides, f"train.method={method}",
                                        f"train.out_dir={out / method}"])
        started = time.perf_counter()
        results[method] = train(cfg, progress=progress, overwrite=True)
        print(f"{method}: {results[method].steps} steps in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    for method in METHODS:
        print(f"{method:<10}  mIoU {results[method].last_miou * 100:.1f}")
    figure = demo_figure(out, cfg)
    print(f"figure: {figure}")
    return results


@torch.no_grad()
def demo_figure(out: Path, cfg, num_images: int = 4) -> Path:
    """Rows of validation images: image | ground truth | supervised | PRCL | PRCL uncertainty."""
    data = build_datasets(cfg.data)
    models = {m: model_from_checkpoint(load_checkpoint(out / m / "last.pth"))[0].eval()
              for m in METHODS}
    rows = []
    for index in range(min(num_images, len(data.val))):
        image, label = data.val[index]
        row = [to_pil_image(image), mask_image(label)]
        for method in METHODS:
            pred = predict(models[method], image[None], cfg.eval, uncertainty=method == "prcl")
            row.append(mask_image(pred.probs[0].argmax(0)))
        row.append(heatmap(pred.uncertainty[0, 0]))
        rows.append(row)
    path = out / "demo.png"
    grid(rows, ["image", "ground truth", "supervised", "PRCL", "PRCL uncertainty"]).save(path)
    return path
