"""Running a file written by ``prcl export --format onnx`` in onnxruntime (the ``onnx``
extra), as a ``prcl.evaluation.Segment``: ``prcl predict`` takes it where it takes a
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prcl.config import EvalConfig
from prcl.data import normalize
from prcl.errors import CheckpointError, first_line
from prcl.evaluation import Prediction
from prcl.export import EXPORT_FORMAT
from prcl.extras import import_extra

JSON_KEYS = ("class_names", "mean", "std", "eval")
"""Metadata values written as JSON (the others are plain text)."""


def read_export_metadata(raw: dict[str, str], path: str | Path) -> dict[str, Any]:
    """An exported file's metadata (``prcl.export.export_metadata``), JSON values decoded;
    ``CheckpointError`` for a file prcl did not export."""
    if raw.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} was not written by `prcl export` (its metadata has no "
                              f"format '{EXPORT_FORMAT}'); export the checkpoint again")
    try:
        return {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: damaged prcl metadata ({exc})") from None


class OnnxSegment:
    """An exported ONNX file as a ``Segment``: ``(images [B, 3, H, W] in [0, 1], uncertainty)
    -> Prediction`` at image size, normalised with the file's own mean and std. ``metadata``
    holds the file's class names, normalisation and ``eval`` settings; ``eval_config`` the
    latter as an ``EvalConfig``; ``has_uncertainty`` whether the file outputs it."""

    def __init__(self, path: str | Path) -> None:
        ort = import_extra("onnxruntime", "onnx", f"running {path}")
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX file {path} does not exist")
        try:
            self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        except Exception as exc:  # onnxruntime's own exception types, not exposed stably
            raise CheckpointError(f"{path} is not a readable ONNX file: {first_line(exc)}") \
                from None
        raw = self.session.get_modelmeta().custom_metadata_map
        self.metadata = read_export_metadata(raw, path)
        self.eval_config = EvalConfig(**self.metadata["eval"])
        self.has_uncertainty = "uncertainty" in [o.name for o in self.session.get_outputs()]

    def __call__(self, images: Tensor, uncertainty: bool) -> Prediction:
        x = normalize(images.float().cpu(), self.metadata["mean"], self.metadata["std"])
        wanted = uncertainty and self.has_uncertainty
        outputs = self.session.run(["probs", "uncertainty"] if wanted else ["probs"],
                                   {"images": x.numpy()})
        probs = torch.from_numpy(outputs[0]).to(images.device)
        return Prediction(probs, torch.from_numpy(outputs[1]).to(images.device) if wanted
                          else None)
