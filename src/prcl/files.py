"""Reading ``.pth`` files as data: one reader for our checkpoints, the authors' and encoder
weights, with errors that name the file and say what to do."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from prcl.errors import CheckpointError


def read_pth(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain Python data only,
    so a file can never run code while it is read. A missing file, a folder, a file holding
    other objects and an unreadable file each raise ``CheckpointError``."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pth"))
        inside = f" ({', '.join(found)} inside)" if found else ""
        raise CheckpointError(f"{path} is a folder; give the {what} file itself{inside}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # damaged or not a pickle at all
            raise CheckpointError(f"{path} is not a readable {what} (damaged, or not a file "
                                  "written by torch.save)") from exc
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and plain data, so prcl does not load "
            "it: loading such a file can run code from it. Re-save only its state dicts."
        ) from exc
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable {what}: {detail}") from exc
