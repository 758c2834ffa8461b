"""Images/s of the exported ONNX model in onnxruntime against PyTorch eager, on the CPU.

The demo's network (``src/prcl/configs/synthetic.yaml``: ResNet-18, 64-channel heads, 5 classes),
randomly initialised or from ``--checkpoint``, exported as ``prcl export`` does (class
probabilities and uncertainty at input size). Both run the same graph on the same batch with
the same number of threads: PyTorch as ``prcl.evaluation.Segmenter`` under inference_mode,
onnxruntime with all its graph optimisations. Timings of the two alternate in one run and
the fastest of ``--repeats`` counts for each, so a busy machine slows both alike.

    python benchmarks/export.py [--size 512] [--batch 1] [--repeats 10] [--threads 2]
                                [--checkpoint RUN/best.pth]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from prcl.config import load_config
from prcl.data.synthetic import CLASS_NAMES
from prcl.engine.checkpoint import checkpoint_class_names, load_checkpoint, model_from_checkpoint
from prcl.evaluation import Segmenter
from prcl.export import export_metadata, export_network
from prcl.models import model_from_config


def demo_network(checkpoint: str | None) -> tuple[torch.nn.Module, dict[str, str]]:
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        model, cfg = model_from_checkpoint(ckpt)
        return model, export_metadata(cfg, checkpoint_class_names(ckpt), True)
    cfg = load_config("synthetic")
    torch.manual_seed(0)
    names = list(CLASS_NAMES)
    return model_from_config(cfg.model, len(names), pretrained=False), export_metadata(
        cfg, names, True)


def measure(size: int, batch: int, repeats: int, threads: int,
            checkpoint: str | None) -> tuple[float, float, float]:
    """Images/s of (PyTorch eager, onnxruntime) and their largest output difference."""
    model, metadata = demo_network(checkpoint)
    model.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_network(model, path, metadata)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    segmenter = Segmenter(model).eval()
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    feed = {"images": images.numpy()}

    def eager() -> list[np.ndarray]:
        with torch.inference_mode():
            return [y.numpy() for y in segmenter(images)]

    def onnx() -> list[np.ndarray]:
        return session.run(None, feed)

    difference = max(np.abs(a - b).max() for a, b in zip(eager(), onnx(), strict=True))
    best = {"eager": float("inf"), "onnx": float("inf")}
    for _ in range(repeats):
        for name, run in (("eager", eager), ("onnx", onnx)):
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return batch / best["eager"], batch / best["onnx"], float(difference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10, help="timings of each, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", help="a trained checkpoint instead of random weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    eager, onnx, difference = measure(args.size, args.batch, args.repeats, args.threads,
                                      args.checkpoint)
    print(f"demo network, {args.batch}x3x{args.size}x{args.size}, {args.threads} threads, CPU, "
          f"best of {args.repeats}; outputs within {difference:.1g}")
    print("| runtime | images/s |")
    print("|---|---:|")
    print(f"| PyTorch eager (torch {torch.__version__}) | {eager:.2f} |")
    print(f"| onnxruntime {ort.__version__} | {onnx:.2f} |")
    print(f"| **onnxruntime / eager** | **{onnx / eager:.2f}x** |")


if __name__ == "__main__":
    main()
