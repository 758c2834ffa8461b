"""Running a file written by ``prcl export --format onnx`` in onnxruntime (the ``onnx``
extra), as a ``prcl.evaluation.Segment``: ``prcl predict`` takes it where it takes a
checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prcl.config import EvalConfig, config_from_dict
from prcl.data import normalize
from prcl.errors import CheckpointError, first_line
from prcl.evaluation import Prediction
from prcl.export import EXPORT_FORMAT
from prcl.extras import import_extra

REQUIRED_KEYS = ("class_names", "mean", "std", "eval")
JSON_KEYS = (*REQUIRED_KEYS, "image_scale")
"""Metadata values written as JSON (the others are plain text); ``image_scale`` may be missing
(files exported before it existed: 1)."""


def read_export_metadata(raw: dict[str, str], path: str | Path) -> dict[str, Any]:
    """An exported file's metadata (``prcl.export.export_metadata``), JSON values decoded and
    checked: class names, a mean and a positive std per channel, and ``eval`` validated as a
    config's ``eval`` section is (same ranges, same messages; it comes back as an
    ``EvalConfig``). ``CheckpointError`` for a file prcl did not export or whose metadata does
    not hold."""
    if raw.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path} was not written by `prcl export` (its metadata has no "
                              f"format '{EXPORT_FORMAT}'); export the checkpoint again")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: its prcl metadata lacks {', '.join(missing)}; export "
                              "the checkpoint again")
    try:
        meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: damaged prcl metadata ({exc})") from None
    names = meta["class_names"]
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: metadata 'class_names' must list at least 2 names")
    for key, low in (("mean", -math.inf), ("std", 0.0)):
        if not _channel_values(meta[key], low):
            above = "above 0" if low == 0 else "finite"
            raise CheckpointError(f"{path}: metadata '{key}' is {_short(raw[key])}; it must be "
                                  f"3 numbers, {above}, one per channel")
    checked = config_from_dict({"eval": meta["eval"],
                                "data": {"image_scale": meta.get("image_scale", 1.0)}},
                               source=f"{path} metadata")
    meta["eval"], meta["image_scale"] = checked.eval, checked.data.image_scale
    return meta


def _channel_values(value: Any, low: float) -> bool:
    """Whether ``value`` is 3 finite numbers above ``low``."""
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool)
                    and math.isfinite(v) and v > low for v in value))


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


class OnnxSegment:
    """An exported ONNX file as a ``Segment``: ``(images [B, 3, H, W] in [0, 1], uncertainty)
    -> Prediction`` at image size, normalised with the file's own mean and std. ``metadata``
    holds the file's class names, normalisation, ``eval`` settings and the ``image_scale`` the
    network was trained at; ``eval_config`` the eval settings as an ``EvalConfig``;
    ``has_uncertainty`` whether the file outputs it."""

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
        self.path = path
        self.metadata = read_export_metadata(raw, path)
        self.eval_config: EvalConfig = self.metadata["eval"]
        self.num_classes = len(self.metadata["class_names"])
        self._check_signature()
        self.has_uncertainty = "uncertainty" in [o.name for o in self.session.get_outputs()]

    def _check_signature(self) -> None:
        """``CheckpointError`` unless the graph takes ``images`` [batch, 3, height, width] alone
        and outputs ``probs`` (with as many channels as the metadata has classes, where the
        graph says) and perhaps ``uncertainty``: the inputs and outputs ``prcl export``
        writes."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names = [o.name for o in outputs]
        if ([i.name for i in inputs] != ["images"] or len(inputs[0].shape) != 4
                or names not in (["probs"], ["probs", "uncertainty"])):
            raise CheckpointError(
                f"{self.path} has prcl metadata but not the inputs and outputs `prcl export` "
                f"writes (it takes {', '.join(i.name for i in inputs)}, gives "
                f"{', '.join(names)}); export the checkpoint with `prcl export`")
        self._check_classes(outputs[0].shape[1])

    def _check_classes(self, channels: Any) -> None:
        """``CheckpointError`` when the ``probs`` channels (an int where known) are not the
        metadata's class count."""
        if isinstance(channels, int) and channels != self.num_classes:
            raise CheckpointError(
                f"{self.path} outputs {channels} classes but its metadata names "
                f"{self.num_classes} ({', '.join(self.metadata['class_names'])}); export the "
                "checkpoint again")

    def __call__(self, images: Tensor, uncertainty: bool) -> Prediction:
        x = normalize(images.float().cpu(), self.metadata["mean"], self.metadata["std"])
        wanted = uncertainty and self.has_uncertainty
        outputs = self.session.run(["probs", "uncertainty"] if wanted else ["probs"],
                                   {"images": x.numpy()})
        probs = torch.from_numpy(outputs[0]).to(images.device)
        self._check_classes(probs.shape[1])
        return Prediction(probs, torch.from_numpy(outputs[1]).to(images.device) if wanted
                          else None)
