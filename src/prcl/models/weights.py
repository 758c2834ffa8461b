"""Encoder weights files as state dicts, checked key by key and shape by shape."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from prcl.errors import CheckpointError
from prcl.files import read_weights


def unwrap_state_dict(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside ``state``: under ``state_dict``/``model`` if wrapped, without a
    ``module.`` prefix (DataParallel)."""
    state = dict(state)
    for wrapper in ("state_dict", "model"):
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_fit(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], name: str,
              hint: str) -> None:
    """``CheckpointError`` naming ``name``, the first missing and unexpected keys and the shapes
    that differ, then ``hint``, unless ``state`` has exactly the keys and shapes of
    ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong_shape):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if wrong_shape:
        parts.append(f"shapes that do not fit (first: {'; '.join(wrong_shape[:3])})")
    raise CheckpointError(f"{name} does not fit this encoder: {'; '.join(parts)}. {hint}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A weights file (``read_weights``) as an unwrapped state dict."""
    state = read_weights(path, "weights file")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return unwrap_state_dict(state)
