"""Pictures: palette masks, overlays, uncertainty heatmaps and figure grids (PIL only)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from prcl.data import palette

_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_COLOURS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
)
"""An inferno-like ramp: dark (certain) to bright yellow (uncertain)."""


def to_pil_image(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> RGB image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), "RGB")


def mask_image(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """[H, W] class indices (255 = ignore) -> a palette ("P") PNG-ready image, VOC colours."""
    array = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.uint8)
    image = Image.fromarray(array, "P")
    image.putpalette(palette(256).reshape(-1).tolist())
    return image


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The image [3, H, W] with the coloured mask [H, W] blended over it."""
    return Image.blend(to_pil_image(image), mask_image(mask).convert("RGB"), alpha)


def heatmap(values: torch.Tensor, low: float | None = None,
            high: float | None = None) -> Image.Image:
    """[H, W] floats -> RGB heatmap; the range defaults to the 2nd-98th percentiles."""
    array = values.detach().float().cpu().numpy()
    low = float(np.percentile(array, 2)) if low is None else low
    high = float(np.percentile(array, 98)) if high is None else high
    scaled = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    rgb = np.stack([np.interp(scaled, _HEAT_STOPS, _HEAT_COLOURS[:, c]) for c in range(3)], -1)
    return Image.fromarray(rgb.round().astype(np.uint8), "RGB")


def grid(rows: list[list[Image.Image]], titles: list[str], cell: int = 160) -> Image.Image:
    """Images laid out in rows under a header of column titles, each cell ``cell`` px wide."""
    header, pad = 18, 4
    width = len(titles) * (cell + pad) + pad
    heights = [max(round(im.height * cell / im.width) for im in row) for row in rows]
    canvas = Image.new("RGB", (width, header + sum(h + pad for h in heights) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles):
        draw.text((pad + c * (cell + pad) + 2, 3), title, fill="black")
    top = header
    for row, height in zip(rows, heights, strict=True):
        for c, im in enumerate(row):
            resample = Image.NEAREST if im.mode == "P" else Image.BILINEAR
            scaled = im.convert("RGB").resize((cell, round(im.height * cell / im.width)), resample)
            canvas.paste(scaled, (pad + c * (cell + pad), top))
        top += height + pad
    return canvas
