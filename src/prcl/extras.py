"""Optional dependencies, each behind an extra of the package (``pip install 'prcl[timm]'``,
``'prcl[onnx]'``): imported only where they are used, with a one-line error where missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from prcl.errors import MissingExtraError


def import_extra(module: str, extra: str, needed_by: str) -> ModuleType:
    """``import module``; when it is not installed, ``MissingExtraError`` saying that
    ``needed_by`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{needed_by} needs {module}, which is not installed: pip install 'prcl[{extra}]'"
        ) from None
