"""Reading ``.pth`` and ``.safetensors`` files as data (one reader for our checkpoints, the
authors' and encoder weights, with errors that name the file and say what to do), and writing
files atomically."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from prcl.errors import CheckpointError, PrclError, first_line
from prcl.extras import import_extra


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """``write`` into a temporary file in the same folder, fsync, then rename over ``path``: a
    crash at any moment leaves either the old file or the new one, never half, and a link at
    ``path`` is replaced, never written through. The file gets the mode a new file gets under
    the user's umask. A write the system refuses (a full disk) raises its ``OSError``, naming
    ``path``, even where ``write`` turned it into another error (``torch.save`` does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            try:
                write(recording)
                f.flush()
                os.fsync(f.fileno())
            except Exception as exc:
                refused = recording.error or (exc if isinstance(exc, OSError) else None)
                if refused is None or refused.errno is None:
                    raise
                raise OSError(refused.errno, refused.strerror, str(path)) from exc
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _RecordingFile:
    """A file object that remembers the first ``OSError`` its ``write`` raised."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_overwriting_inputs(output: str | Path, inputs: Iterable[str | Path],
                              option: str = "--out") -> None:
    """``PrclError`` when ``output`` is (or links to) one of a command's ``inputs``: writing
    it would replace what the command reads."""
    target = Path(output).resolve()
    for item in inputs:
        if Path(item).resolve() == target:
            raise PrclError(f"{option} {output} is the input {item}: writing it would replace "
                            f"that file; give another {option}")


def read_pth(path: str | Path, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain Python data only,
    so a file can never run code while it is read; ``mmap``: tensors mapped, not read. A
    missing file, a folder, a file holding other objects and an unreadable file each raise
    ``CheckpointError``."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pth"))
        inside = f" ({', '.join(found)} inside)" if found else ""
        raise CheckpointError(f"{path} is a folder; give the {what} file itself{inside}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # damaged or not a pickle at all
            raise CheckpointError(f"{path} is not a readable {what} (damaged, or not a file "
                                  "written by torch.save)") from exc
        raise CheckpointError(
            f"{path} holds Python objects besides tensors and plain data, so prcl does not load "
            "it: loading such a file can run code from it. Re-save only its state dicts."
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable {what}: {first_line(exc)}") from exc


def read_weights(path: str | Path, what: str = "weights file") -> Any:
    """A ``.safetensors`` file (needs the safetensors package, part of the timm extra) as a dict
    of tensors, anything else through ``read_pth``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_pth(path, what)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    safetensors = import_extra("safetensors.torch", "timm", f"reading {path}")
    try:
        return safetensors.load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {first_line(exc)}") \
            from exc
