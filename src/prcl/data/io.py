"""Reading images and label masks from disk, with errors that name the file (docs/method.md 1).

Images become float32 tensors in [0, 1], [3, H, W]. Masks are read as class indices: a
grayscale ('L') or palette ('P') PNG gives its stored indices directly; 255 is ignore.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from prcl.errors import DataError

IGNORE_INDEX = 255
"""Label value of pixels that take part in no loss and no metric (VOC's void border)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_INDEX_MODES = ("L", "P", "I", "I;16", "1")

PIXEL_LIMIT_VARIABLE = "PRCL_MAX_IMAGE_PIXELS"
"""Environment variable: the pixel count above which an image is refused, in place of PIL's
decompression-bomb limit (twice ``Image.MAX_IMAGE_PIXELS``: 178,956,970 pixels)."""


UNREADABLE = (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError)
"""What PIL raises for a file it cannot read."""


def _open(path: Path, what: str) -> Image.Image:
    _require_file(path, what)
    _apply_pixel_limit()
    try:
        img = Image.open(path)
        img.load()
    except UNREADABLE as exc:
        raise _unreadable(path, what, exc) from exc
    return img


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(
            f"{path}: {what} not found; restore the file or remove its id from the split list"
        )


def _apply_pixel_limit() -> None:
    """Set PIL's limit from ``PIXEL_LIMIT_VARIABLE`` where the user gave one."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE)
    if value is not None:
        if not value.isdigit() or int(value) < 2:
            raise DataError(f"{PIXEL_LIMIT_VARIABLE}={value!r}: give a number of pixels, e.g. "
                            "400000000")
        Image.MAX_IMAGE_PIXELS = int(value) // 2  # PIL refuses above twice this


def _unreadable(path: Path, what: str, exc: Exception) -> DataError:
    """The DataError for a file PIL could not read: too many pixels (PIL's guard against
    decompression bombs), or damaged."""
    if isinstance(exc, Image.DecompressionBombError):
        return DataError(
            f"{path}: the {what} has more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, the limit "
            f"that guards against decompression bombs; shrink it, or raise the limit with "
            f"{PIXEL_LIMIT_VARIABLE}=<pixels> if you trust the file"
        )
    return DataError(
        f"{path}: cannot read {what} ({exc}); the file is damaged or not an image, "
        "download it again or remove its id from the split"
    )


EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that turn the stored image by 90 degrees (width and height swap)."""


def read_image(path: str | Path) -> torch.Tensor:
    """An RGB image as float32 [3, H, W] in [0, 1], turned as its EXIF orientation says (as a
    viewer shows it, and as masks drawn on it are)."""
    img = ImageOps.exif_transpose(_open(Path(path), "image")).convert("RGB")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def read_mask_values(path: str | Path) -> np.ndarray:
    """A single-channel mask's stored integers [H, W] as they are (16-bit PNGs included)."""
    path = Path(path)
    img = _open(path, "mask")
    if img.mode not in _INDEX_MODES:
        raise DataError(
            f"{path}: mask has mode {img.mode} (colours); save class indices as a single-channel "
            "grayscale or palette PNG (pixel value = class index, 255 = ignore)"
        )
    array = np.asarray(img)
    return array.astype(np.uint8) if array.dtype == bool else array


def read_mask(path: str | Path) -> np.ndarray:
    """A label mask's stored class indices as uint8 [H, W] (palette PNGs give their indices)."""
    array = read_mask_values(path)
    if array.max(initial=0) > 255 or array.min(initial=0) < 0:
        raise DataError(
            f"{path}: mask values exceed 0-255; store class indices 0-254 and 255 as ignore"
        )
    return array.astype(np.uint8)


def header_size(path: Path, what: str) -> tuple[int, int]:
    """(width, height) of an image file as ``read_image`` returns it, from its header alone
    (the pixels are not decoded); a missing or unreadable file raises DataError."""
    _require_file(path, what)
    _apply_pixel_limit()
    try:
        with Image.open(path) as img:
            width, height = img.size
            turned = img.getexif().get(EXIF_ORIENTATION) in TRANSPOSING_ORIENTATIONS
    except UNREADABLE as exc:
        raise _unreadable(path, what, exc) from exc
    return (height, width) if turned else (width, height)


def check_mask_values(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise DataError unless every value is a class index below num_classes or 255."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8])
        raise DataError(
            f"{path}: mask values {shown} are neither classes 0-{num_classes - 1} nor "
            f"{IGNORE_INDEX} (ignore); fix the mask or the class list (colour masks must be "
            "converted to class indices)"
        )


def check_same_size(
    image: torch.Tensor, mask: np.ndarray, image_path: Path, mask_path: Path
) -> None:
    """Raise DataError when an image [3, H, W] and its mask [H, W] differ in size."""
    if tuple(image.shape[-2:]) != tuple(mask.shape):
        h, w = image.shape[-2:]
        raise DataError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{w}x{h}; the mask must have the image's size (do not resize one without the other)"
        )


def list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files in folder (not recursive) whose suffix is one of suffixes, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def broken_links(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Links in folder (not recursive) with one of suffixes whose target does not exist
    (``list_files`` leaves them out), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_symlink() and not p.exists() and p.suffix.lower() in suffixes)


def broken_link_problem(path: Path) -> str:
    return (f"{path}: a link to {os.readlink(path)}, which does not exist; restore its target "
            "or remove the link")
