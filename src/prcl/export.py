"""Export a checkpoint's network for use outside PyTorch: ONNX (the ``onnx`` extra) or
TorchScript.

What is exported is ``prcl.evaluation.Segmenter`` in eval mode: input ``images`` [batch, 3,
height, width], RGB in [0, 1] normalised as (x - mean) / std; outputs ``probs`` [batch, C,
height, width], the class probabilities at input resolution, and (unless left out)
``uncertainty`` [batch, 1, height, width], the mean sigma^2 of each pixel's representation.
Batch, height and width are dynamic. The class names, the normalisation and how prcl predicts
(``eval``) go into the ONNX metadata (string values, JSON where not plain text) or, for
TorchScript, into the file's ``prcl.json``. Every export is run once at a size other than the
one it was traced with and compared with PyTorch before it is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import torch
from torch import Tensor

from prcl import __version__
from prcl.config import Config
from prcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from prcl.engine.checkpoint import checkpoint_class_names, load_checkpoint, model_from_checkpoint
from prcl.errors import ExportError, first_line
from prcl.evaluation import Segmenter
from prcl.extras import import_extra
from prcl.files import atomic_write
from prcl.models import DeepLabV3Plus

FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pts": "torchscript",
            ".torchscript": "torchscript"}
"""The format a file name's extension stands for."""
EXPORT_FORMAT = "prcl-export-1"
TRACE_SHAPE = (2, 3, 96, 128)
"""The example the network is traced with: every size distinct, since torch.export gives
equal example sizes one symbol (the export would then demand height == width)."""
CHECK_SHAPE = (1, 3, 80, 112)
TOLERANCE = 1e-4
ONNX_LIMIT = 2**31
"""Bytes: protobuf's limit on one ONNX file."""
TORCHSCRIPT_METADATA = "prcl.json"

Writer = Callable[[BinaryIO], None]
Runner = Callable[[Tensor], list[Tensor]]


class ExportResult(NamedTuple):
    path: Path
    outputs: list[str]
    max_difference: float
    """The largest difference from PyTorch over the outputs at ``CHECK_SHAPE``."""


def export_metadata(cfg: Config, class_names: list[str], uncertainty: bool,
                    which: str = "teacher") -> dict[str, str]:
    """What an exported file says about itself: string keys and values."""
    outputs = "probs: [batch, C, height, width] class probabilities (softmax) at input size"
    if uncertainty:
        outputs += ("; uncertainty: [batch, 1, height, width] the mean over dimensions of "
                    "sigma^2, the variance of each pixel's representation")
    return {
        "format": EXPORT_FORMAT,
        "class_names": json.dumps(class_names),
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "input": "images: float32 [batch, 3, height, width], RGB in [0, 1] normalised per "
                 "channel as (x - mean) / std",
        "outputs": outputs,
        "encoder": cfg.model.encoder,
        "network": which,
        "eval": json.dumps(dataclasses.asdict(cfg.eval)),
        "image_scale": json.dumps(cfg.data.image_scale),
        "prcl_version": __version__,
    }


def format_for(out: str | Path, fmt: str | None = None) -> str:
    """The format to write ``out`` in: ``fmt`` when given, else the one its extension names
    (``SUFFIXES``); ``ExportError`` when neither says, or when they disagree."""
    by_name = SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None and by_name is None:
        raise ExportError(f"--out {out}: name the file .onnx (ONNX) or .pt (TorchScript), or "
                          "give --format")
    if fmt is not None and by_name is not None and fmt != by_name:
        raise ExportError(f"--out {out}: its extension means {by_name}, but --format is "
                          f"{fmt}; make them agree")
    return fmt or by_name


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str = "onnx",
                      which: str = "teacher", uncertainty: bool = True) -> ExportResult:
    """Export the ``which`` network (teacher | student) of a prcl checkpoint to ``out``; see
    ``export_network``."""
    ckpt = load_checkpoint(checkpoint)
    model, cfg = model_from_checkpoint(ckpt, which)
    metadata = export_metadata(cfg, checkpoint_class_names(ckpt), uncertainty, which)
    return export_network(model, out, metadata, fmt, uncertainty)


def export_network(model: DeepLabV3Plus, path: str | Path, metadata: dict[str, str],
                   fmt: str = "onnx", uncertainty: bool = True) -> ExportResult:
    """Export ``model`` (put on the CPU in eval mode) to ``path`` (written atomically) as
    ``fmt`` (onnx | torchscript), checked against PyTorch; ``ExportError`` if it differs by
    more than ``TOLERANCE``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    segmenter = Segmenter(model.cpu().eval(), uncertainty).eval()
    outputs = ["probs", "uncertainty"] if uncertainty else ["probs"]
    example = torch.randn(TRACE_SHAPE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if fmt == "onnx":
            write, run = _onnx(segmenter, example, outputs, metadata)
        else:
            write, run = _torchscript(segmenter, example, metadata)
        check = torch.randn(CHECK_SHAPE, generator=torch.Generator().manual_seed(1))
        difference = max((got - want).abs().max().item()
                         for got, want in zip(run(check), segmenter(check), strict=True))
    if not difference <= TOLERANCE:
        raise ExportError(f"the {fmt} export differs from PyTorch by {difference:.2g} at "
                          f"{'x'.join(map(str, CHECK_SHAPE))} (more than {TOLERANCE}); it was "
                          f"not written to {path}")
    atomic_write(path, write)
    return ExportResult(Path(path), outputs, difference)


def _onnx(segmenter: Segmenter, example: Tensor, outputs: list[str],
          metadata: dict[str, str]) -> tuple[Writer, Runner]:
    """The dynamo exporter (torch.export, then onnxscript): dynamic batch, height and width.
    Returns the file writer and a runner of the exported graph in onnxruntime."""
    import_extra("onnxscript", "onnx", "prcl export --format onnx")
    onnx = import_extra("onnx", "onnx", "prcl export --format onnx")
    ort = import_extra("onnxruntime", "onnx", "prcl export --format onnx")
    size = sum(p.numel() * p.element_size() for p in segmenter.state_dict().values())
    if size > ONNX_LIMIT * 0.95:
        raise ExportError(f"the network's {size / 2**30:.1f} GiB of weights pass ONNX's 2 GiB "
                          "limit for one file; use --format torchscript")
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
            3: torch.export.Dim("width")}
    try:
        program = torch.onnx.export(segmenter, (example,), None, dynamo=True, verbose=False,
                                    input_names=["images"], output_names=outputs,
                                    dynamic_shapes={"images": dims})
    except Exception as exc:  # torch.export's and onnxscript's many error types
        raise ExportError(f"PyTorch's ONNX exporter cannot export this network "
                          f"({first_line(exc)}); PRCL_DEBUG=1 shows why, --format torchscript "
                          "may work") from exc
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    def run(images: Tensor) -> list[Tensor]:
        return [torch.from_numpy(y) for y in session.run(outputs, {"images": images.numpy()})]

    return (lambda f: f.write(data)), run


def _torchscript(segmenter: Segmenter, example: Tensor,
                 metadata: dict[str, str]) -> tuple[Writer, Runner]:
    """``torch.jit.trace`` (the sizes stay symbolic; the check at another size confirms it).
    PyTorch deprecates TorchScript; its warnings about that are not repeated here."""
    try:
        with _quiet_torchscript():
            traced = torch.jit.trace(segmenter, (example,), check_trace=False)
    except Exception as exc:  # the tracer's error types
        raise ExportError(f"torch.jit.trace cannot trace this network ({first_line(exc)}); "
                          "PRCL_DEBUG=1 shows why, --format onnx may work") from exc
    extra = {TORCHSCRIPT_METADATA: json.dumps(metadata)}

    def write(f: BinaryIO) -> None:
        with _quiet_torchscript():
            torch.jit.save(traced, f, _extra_files=extra)

    return write, lambda images: list(traced(images))


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
