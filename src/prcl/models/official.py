"""Import checkpoints written by the authors' PRCL code (``best_model.pth``).

Their file is a dict with ``model`` (student) and ``ema`` (teacher) DeepLabv3+ state dicts, the
probability head under ``uncer_head``, and optimiser state. Their module names map onto ours:
``resnet_conv1``/``resnet_bn1``/``resnet_layerN`` -> ``encoder.*``, ``ASPP`` -> ``aspp``,
``project`` -> ``low_level``, ``classifier`` and ``representation`` unchanged, and every
``uncer_head`` key -> ``probability_head.*``. The authors keep one probability head (no EMA
copy), so both ``which="model"`` and ``which="ema"`` use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from prcl.errors import CheckpointError
from prcl.files import read_pth
from prcl.models.deeplab import DeepLabV3Plus, build_model

_PREFIXES = (
    ("resnet_conv1.", "encoder.conv1."),
    ("resnet_bn1.", "encoder.bn1."),
    ("resnet_layer", "encoder.layer"),
    ("ASPP.", "aspp."),
    ("project.", "low_level."),
    ("classifier.", "classifier."),
    ("representation.", "representation."),
)


def convert_official_state_dict(
    checkpoint: Mapping[str, Any], which: str = "model"
) -> dict[str, Tensor]:
    """Our network's state dict from the authors' checkpoint dict (``which``: model | ema)."""
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema', got '{which}'")
    if not isinstance(checkpoint, Mapping) or not {which, "uncer_head"} <= set(checkpoint):
        found = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint)
        raise CheckpointError(
            "not a checkpoint written by the authors' PRCL code: expected the keys "
            f"'{which}' and 'uncer_head' (found {found}). For ImageNet encoder weights use "
            "model.pretrained instead."
        )
    state: dict[str, Tensor] = {}
    for key, value in checkpoint[which].items():
        key = key.removeprefix("module.")
        for theirs, ours in _PREFIXES:
            if key.startswith(theirs):
                state[ours + key[len(theirs):]] = value
                break
        else:
            raise CheckpointError(
                f"unexpected key '{key}' in the authors' '{which}' state dict: this network "
                "is not the DeepLabv3+ of their PRCL code"
            )
    for key, value in checkpoint["uncer_head"].items():
        state["probability_head." + key.removeprefix("module.")] = value
    return state


def load_official(
    path_or_dict: str | Path | Mapping[str, Any],
    num_classes: int = 21,
    which: str = "model",
    output_stride: int = 16,
) -> DeepLabV3Plus:
    """Our ResNet-101 DeepLabv3+ holding the authors' weights, in eval mode.

    ``which``: ``"model"`` (the student) or ``"ema"`` (the mean teacher, the one they
    evaluate). The encoder is the torchvision-stem ResNet-101 or, when the checkpoint holds a
    three-conv stem, the deep-stem variant. Every key must be consumed and every weight of
    our network filled, else ``CheckpointError`` lists the first offenders.
    """
    if isinstance(path_or_dict, str | Path):
        path = Path(path_or_dict)
        checkpoint, source = read_pth(path), str(path)
    else:
        checkpoint, source = path_or_dict, "the given checkpoint"
    try:
        state = convert_official_state_dict(checkpoint, which)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    deep_stem = "encoder.conv1.0.weight" in state
    model = build_model(
        "resnet101_deepstem" if deep_stem else "resnet101", num_classes, output_stride
    )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not fit a ResNet-101 DeepLabv3+ with {num_classes} classes: "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes "
            f"{[(k, tuple(state[k].shape)) for k in wrong[:3]]}. Check --num-classes."
        )
    model.load_state_dict(state)
    return model.eval()
