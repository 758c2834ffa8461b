"""Any timm model as the DeepLabv3+ encoder: ``model.encoder: timm:<name>`` (the ``timm``
extra, ``pip install 'prcl[timm]'``).

The model is created with ``features_only=True``. The high-level features for ASPP are its
last feature map, at the output stride through timm's ``output_stride`` (dilation) where the
model takes it; a model that does not take it must reach the output stride by itself (ViTs:
16), else it is refused with the strides it offers. The low-level features for the decoder
are its stride-4 feature map or, where it has none, the one nearest to stride 4 (in octaves;
the coarser on a tie, the deeper among equals; never the last one when there are others), so
the decoder and the heads work at that stride. Channels come from timm's ``feature_info``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from prcl.errors import CheckpointError, ConfigError, first_line
from prcl.extras import import_extra
from prcl.models.packaged_weights import (
    efficientnet_port_to_timm,
    is_efficientnet_port,
    packaged_weights_path,
)
from prcl.models.weights import check_fit, read_state_dict

TIMM_PREFIX = "timm:"

_OPTIONS = (("output_stride",), ("dynamic_img_size", "dynamic_img_pad"), ())
"""Keyword sets tried in turn, the first a model takes wins: dilation to the output stride;
any input size for ViT-class models (padded to the patch size); neither."""


class TimmEncoder(nn.Module):
    """A timm ``features_only`` model. ``forward(images [B, 3, H, W]) -> (low [B, C_low, H/l,
    W/l], high [B, C_high, H/s, W/s])`` with l the low-level stride (``low_stride``, 4 where
    the model has a stride-4 stage) and s the output stride. Feature maps the model gives
    channels-last (Swin) are returned channels-first."""

    classifier_prefix = ""
    """The classifier is never part of a ``features_only`` model."""

    def __init__(self, body: nn.Module, output_stride: int) -> None:
        super().__init__()
        strides, channels = body.feature_info.reduction(), body.feature_info.channels()
        self.body = body
        self.low_index = low_level_index(strides)
        self.low_stride = strides[self.low_index]
        self.low_channels = channels[self.low_index]
        self.high_channels = channels[-1]
        self.output_stride = output_stride
        self.channels_last = getattr(body, "output_fmt", "NCHW") == "NHWC"

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images)
        low, high = features[self.low_index], features[-1]
        if self.channels_last:
            return low.permute(0, 3, 1, 2), high.permute(0, 3, 1, 2)
        return low, high


def low_level_index(strides: list[int]) -> int:
    """The feature map for the decoder: at stride 4, else the nearest to it in octaves (the
    coarser on a tie), the deeper among equal strides, and not the last map (the high-level
    one) unless it is the only one."""
    candidates = range(len(strides) - 1) if len(strides) > 1 else range(1)
    return min(candidates, key=lambda i: (abs(math.log2(strides[i] / 4)), -strides[i], -i))


def build_timm_encoder(name: str, output_stride: int = 16,
                       weights: str | None = None) -> TimmEncoder:
    """The timm model ``name`` as an encoder at ``output_stride`` (8 or 16).

    ``weights``: None (random initialisation), a local weights file in timm's format (a timm
    model's ``state_dict()`` as ``.pth``, or ``model.safetensors`` as on the Hugging Face hub;
    the classifier is dropped) or in the EfficientNet PyTorch port's (renamed,
    ``prcl.models.packaged_weights``), ``"package"`` for the ImageNet weights an installed
    pip package ships (``PACKAGED``; no download), or ``"timm"`` to download timm's
    pretrained weights (needs a network). A name timm does not know, a model without
    ``features_only`` or one that cannot reach ``output_stride`` is a ``ConfigError``;
    weights that do not fit, a ``CheckpointError``.
    """
    timm = import_extra("timm", "timm", f"model.encoder '{TIMM_PREFIX}{name}'")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1, cutoff=0.6)
        hint = f"; did you mean '{TIMM_PREFIX}{close[0]}'?" if close else (
            " (timm.list_models() lists them)")
        raise ConfigError(f"model.encoder '{TIMM_PREFIX}{name}': timm has no model '{name}'{hint}")
    if weights == "torchvision":
        raise CheckpointError(f"model.pretrained=torchvision is for the built-in encoders; for "
                              f"{TIMM_PREFIX}{name} give a local timm weights file, or "
                              "model.pretrained=timm to download timm's")
    options = _features_options(timm, name, output_stride)
    if weights == "package":
        weights = str(packaged_weights_path(name))
    load: dict[str, Any] = {}
    if weights == "timm":
        load = {"pretrained": True}
    elif weights is not None:
        state = _timm_state_dict(timm, name, weights)
        load = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state,
                                                               "num_classes": 0}}
    try:
        with _quiet(logging.getLogger("timm.models._builder")):  # the keys are checked above
            body = timm.create_model(name, features_only=True, **options, **load)
    except Exception as exc:  # a download: the hub's, urllib's and timm's own errors
        if weights != "timm":
            raise
        raise CheckpointError(
            f"could not get timm's pretrained weights for {name} ({first_line(exc)}); without "
            "a network, download them elsewhere and give the file: "
            "model.pretrained=/path/to/model.safetensors"
        ) from None
    return TimmEncoder(body, output_stride)


def _features_options(timm: ModuleType, name: str, output_stride: int) -> dict[str, Any]:
    """The first of ``_OPTIONS`` the model takes, checked to reach ``output_stride``; the
    models are built for their shapes only."""
    for keys in _OPTIONS:
        options = {k: output_stride if k == "output_stride" else True for k in keys}
        try:
            body = _shapes_only(lambda o=options: timm.create_model(name, features_only=True, **o))
        except (TypeError, AssertionError) as exc:  # refused: unknown keyword, or a value
            if keys and (isinstance(exc, AssertionError) or "unexpected keyword" in str(exc)):
                continue
            raise ConfigError(f"model.encoder '{TIMM_PREFIX}{name}': timm cannot build it with "
                              f"features_only=True ({first_line(exc)})") from None
        strides = body.feature_info.reduction()
        if strides[-1] == output_stride:
            return options
        how = "even with timm's output_stride" if keys == ("output_stride",) else (
            "and it does not take timm's output_stride")
        use = (f"model.output_stride={strides[-1]}" if strides[-1] in (8, 16) else
               "an encoder that dilates (timm's resnets, convnexts, efficientnets, "
               "mobilenetv3s ...)")
        raise ConfigError(
            f"model.encoder '{TIMM_PREFIX}{name}' cannot run at model.output_stride="
            f"{output_stride}: its last feature map is at stride {strides[-1]} {how} (its "
            f"feature strides: {', '.join(map(str, strides))}). Use {use}"
        )
    raise AssertionError("the last option set is empty and always taken")


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """timm logs every key a features-only model leaves out of a checkpoint (the head): known
    and checked here, so not repeated."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _shapes_only(create: Callable[[], nn.Module]) -> nn.Module:
    """``create()`` on the meta device (no memory, no initialisation), or on the CPU for a
    model whose construction needs real tensors."""
    try:
        with torch.device("meta"):
            return create()
    except (RuntimeError, NotImplementedError) as exc:
        if "meta" not in str(exc):
            raise
    return create()


def _timm_state_dict(timm: ModuleType, name: str, path: str) -> dict[str, Tensor]:
    """The weights file as a state dict of the model without its classifier, checked key by key
    and shape by shape against the classification model (``_OPTIONS`` change no weight; the
    classification model of some does not even take them). A file in the EfficientNet
    PyTorch port's layout is renamed to timm's names first."""
    state = read_state_dict(path)
    expected = _shapes_only(lambda: timm.create_model(name, num_classes=0))
    if is_efficientnet_port(state):
        state = efficientnet_port_to_timm(state, list(expected.state_dict()))
    classifiers = getattr(timm.models.get_pretrained_cfg(name), "classifier", None) or ()
    for classifier in (classifiers,) if isinstance(classifiers, str) else classifiers:
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    check_fit(expected.state_dict(), state, path, f"Give the weights of timm's {name} in "
              "timm's format (its state_dict(), or model.safetensors from the Hugging Face hub).")
    return state
