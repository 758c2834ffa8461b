"""The batched unlabelled pipeline of METHOD.md 7.3-7.5, on tensors, on any device.

Every function takes a batch and draws one set of random choices per image from an optional
``torch.Generator`` living on the batch's device, so the same generator state gives the same
batch. No PIL and no per-image arithmetic: geometry is ``grid_sample`` on one grid (image
bilinear; labels and confidence nearest), mixing is masks built by broadcasting, colour
jitter is one batched 3x3 colour matrix, blur is a separable depthwise convolution.

Shapes: images [B, 3, H, W] float in [0, 1]; labels [B, H, W] int64 (255 = ignore);
confidence [B, H, W] float in [0, 1] (0 where ignored or padded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from prcl.data.io import IGNORE_INDEX

Batch = tuple[Tensor, Tensor, Tensor]

MIX_MODES = ("classmix", "cutmix", "cutout", "none")

JITTER_P = 0.8
JITTER_RANGE = (0.75, 1.25)
"""Brightness, contrast and saturation factors are drawn from this range."""
HUE_RANGE = (-0.25, 0.25)
"""Hue shift as a fraction of the colour circle."""
BLUR_P = 0.5
BLUR_SIGMA = (0.15, 1.15)
FLIP_P = 0.5


def _uniform(
    n: int, low: float, high: float, like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """[n] floats drawn uniformly from [low, high) on like's device."""
    u = torch.rand(n, generator=generator, device=like.device)
    return low + (high - low) * u


def _randint(high: Tensor, generator: torch.Generator | None) -> Tensor:
    """One integer in [0, high_i) per entry of high [n] (int64, every high_i >= 1)."""
    u = torch.rand(high.shape, generator=generator, device=high.device)
    return torch.minimum((u * high).long(), high - 1)


def _bernoulli(n: int, p: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """[n] booleans, each True with probability p."""
    return torch.rand(n, generator=generator, device=like.device) < p


# --- 7.3 geometry ---------------------------------------------------------------------------


def _reflect(coord: Tensor, size: int) -> Tensor:
    """Coordinates in pixel units whose 0 and size are the image's edges, mirrored at the
    edges into [0, size] (reflection padding, repeated for any distance)."""
    folded = coord.remainder(2 * size)
    return torch.where(folded > size, 2 * size - folded, folded)


def _fill_padding(maps: Tensor, fill: float, valid_rows: list[int], valid_cols: list[int],
                  flipped: list[bool]) -> Tensor:
    """Write ``fill`` into the padded part of each crop of maps [B, h, w], in place.

    Crop i is padding from row valid_rows[i] on and from column valid_cols[i] on (the first
    w - valid_cols[i] columns when flipped[i]). Padding is a rectangle per image, so slices
    write it touching nothing else (a [B, h, w] mask costs several passes over the batch)."""
    width = maps.shape[-1]
    for i, (rows, cols, flip) in enumerate(zip(valid_rows, valid_cols, flipped, strict=True)):
        maps[i, rows:] = fill
        maps[i, :, slice(0, width - cols) if flip else slice(cols, width)] = fill
    return maps


def _sample_nearest(maps: Tensor, grid: Tensor, fill: float,
                    padding: tuple[list[int], list[int], list[bool]]) -> Tensor:
    """maps [B, H, W] at grid [B, h, w, 2] (``grid_sample``'s convention), nearest neighbour,
    with ``fill`` written into the padding (``_fill_padding``'s arguments) -> [B, h, w] of
    maps' dtype. One channel at a time through float32: exact for labels (below 2^24), and
    cheaper than stacking labels and confidence into one tensor first."""
    near = F.grid_sample(maps.float()[:, None], grid, mode="nearest", padding_mode="border",
                         align_corners=False)[:, 0]
    return _fill_padding(near, fill, *padding).to(maps.dtype)


def random_scale_crop(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    crop_size: int,
    scale_range: tuple[float, float],
    generator: torch.Generator | None = None,
    hflip: bool = False,
) -> Batch:
    """Random scale, pad to the crop size and random crop, one transform per image (METHOD 7.3),
    and with ``hflip`` the horizontal flip of 7.5 (p 0.5 per image).

    Each image is rescaled by s ~ U(scale_range) to floor(s * H) x floor(s * W), padded on the
    right and bottom up to crop_size when smaller (image: reflection; label: 255;
    confidence: 0), cropped at a random offset and, with hflip, mirrored; image, label and
    confidence share the transform. Done by ``grid_sample`` on one grid: the image bilinear,
    label and confidence nearest (the source pixel that contains the point), their padding
    then written by slices. The flip only reverses the crop's column order, so it costs
    nothing here.

    METHOD 7.5 flips after mixing; flipping here instead is the same flip per image, except
    that the pixels an image takes from its mixing partner carry the partner's coin rather
    than its own (both are fair coins, independent of the pixels).

    images [B, 3, H, W], labels [B, H, W], confidence [B, H, W] ->
    [B, 3, crop, crop], [B, crop, crop], [B, crop, crop].
    """
    b, _, h, w = images.shape
    scale = _uniform(b, scale_range[0], scale_range[1], images, generator)
    scaled_h = (scale * h).floor().clamp(min=1).long()
    scaled_w = (scale * w).floor().clamp(min=1).long()
    top = _randint(scaled_h.clamp(min=crop_size) - crop_size + 1, generator)
    left = _randint(scaled_w.clamp(min=crop_size) - crop_size + 1, generator)
    steps = torch.arange(crop_size, device=images.device)
    rows = top[:, None] + steps[None]  # [B, crop]: row in the scaled, padded image
    cols = left[:, None] + steps[None]
    flip = (_bernoulli(b, FLIP_P, images, generator) if hflip
            else torch.zeros(b, dtype=torch.bool, device=images.device))
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Pixel centres of the crop in the source image, in units of source pixels.
    src_y = (rows + 0.5) * (h / scaled_h[:, None])
    src_x = (cols + 0.5) * (w / scaled_w[:, None])
    # Reflection padding, done on the (separable) coordinates: grid_sample's own is slower.
    grid = torch.stack(
        (
            (2.0 * _reflect(src_x, w) / w - 1.0)[:, None, :].expand(b, crop_size, crop_size),
            (2.0 * _reflect(src_y, h) / h - 1.0)[:, :, None].expand(b, crop_size, crop_size),
        ),
        dim=-1,
    )
    out_images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear",
                               padding_mode="border", align_corners=False)
    padding = ((scaled_h - top).clamp(max=crop_size).tolist(),
               (scaled_w - left).clamp(max=crop_size).tolist(), flip.tolist())
    out_labels = _sample_nearest(labels, grid, IGNORE_INDEX, padding)
    out_confidence = _sample_nearest(confidence, grid, 0.0, padding)
    return out_images, out_labels, out_confidence


# --- 7.4 mixing -----------------------------------------------------------------------------


def classmix_mask(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Pixels of a random half (floor) of each image's classes (METHOD 7.4, ClassMix).

    labels [B, H, W] (255 is not a class) -> keep [B, H, W] bool: True where the pixel's class
    is one of the floor(n_i / 2) classes drawn for image i out of its n_i present classes.
    """
    b = labels.shape[0]
    flat = labels.reshape(b, -1)
    present = torch.zeros(b, IGNORE_INDEX + 1, dtype=torch.uint8, device=labels.device)
    ones = torch.ones(1, dtype=torch.uint8, device=labels.device).expand_as(flat)
    present = present.scatter_(1, flat, ones).bool()  # a tensor source: the fast kernel
    present[:, IGNORE_INDEX] = False
    scores = torch.rand(present.shape, generator=generator, device=labels.device)
    scores = scores.masked_fill(~present, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # 0 = first drawn class
    keep_count = present.sum(dim=1, keepdim=True) // 2
    chosen = (rank < keep_count) & present
    return chosen.gather(1, flat).reshape(labels.shape)


def box_mask(
    batch: int, height: int, width: int, device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A random rectangle of about half the image area per image (METHOD 7.4, CutMix/CutOut).

    Width w ~ U{floor(W/2)+1, ..., W-1} (W when W < 3), height round(H*W / 2 / w), placed
    uniformly inside the image. Returns [B, H, W] bool, True inside the rectangle.
    """
    low = width // 2 + 1
    span = torch.full((batch,), max(width - low, 1), device=device)
    box_w = (low + _randint(span, generator)).clamp(max=width)
    box_h = (height * width / 2 / box_w).round().long().clamp(1, height)
    top = _randint(height - box_h + 1, generator)
    left = _randint(width - box_w + 1, generator)
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    return (
        (rows >= top[:, None, None]) & (rows < (top + box_h)[:, None, None])
        & (cols >= left[:, None, None]) & (cols < (left + box_w)[:, None, None])
    )


def mix(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    mode: str,
    generator: torch.Generator | None = None,
    partner: Batch | None = None,
) -> Batch:
    """Mix each image with a partner image (METHOD 7.4).

    classmix: image i keeps the pixels of a random half (floor) of its pseudo-classes and takes
    the rest from its partner; cutmix: a random rectangle of half the area comes from the
    partner; cutout: a random rectangle of half the area is zeroed, its labels set to 255 and
    its confidence to 0 (no partner); none: unchanged. Labels and confidence move with the
    pixels. The partner of image i is image (i + 1) % B unless ``partner`` gives
    (images, labels, confidence) of the same shapes to paste from, row i for image i.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode '{mode}': choose from {', '.join(MIX_MODES)}")
    if mode == "none":
        return images, labels, confidence
    b, _, h, w = images.shape
    if mode == "cutout":
        cut = box_mask(b, h, w, images.device, generator)
        return (
            images.masked_fill(cut[:, None], 0.0),
            labels.masked_fill(cut, IGNORE_INDEX),
            confidence.masked_fill(cut, 0.0),
        )
    if mode == "classmix":
        keep = classmix_mask(labels, generator)
    else:
        keep = ~box_mask(b, h, w, images.device, generator)
    own = (images, labels, confidence)
    weight = keep.to(images.dtype)  # converted once for both floating-point tensors
    masks = (weight[:, None], keep, weight.to(confidence.dtype))
    if partner is not None:
        return tuple(_paste(k, x, p) for k, x, p in zip(masks, own, partner, strict=True))
    return tuple(_paste_from_next(k, x) for k, x in zip(masks, own, strict=True))


def _paste(keep: Tensor, own: Tensor, partner: Tensor, out: Tensor | None = None) -> Tensor:
    """own where keep, else partner (keep broadcasts over own's channels)."""
    if own.is_floating_point():  # lerp with a 0/1 weight: exact, and faster than where
        return torch.lerp(partner, own, keep.to(own.dtype), out=out)
    return torch.where(keep, own, partner, out=out)


def _paste_from_next(keep: Tensor, own: Tensor) -> Tensor:
    """``_paste`` with image (i + 1) % B as the partner of image i, without copying the batch."""
    out = torch.empty_like(own)
    _paste(keep[:-1], own[:-1], own[1:], out=out[:-1])
    _paste(keep[-1:], own[-1:], own[:1], out=out[-1:])
    return out


# --- 7.5 photometric ------------------------------------------------------------------------


_LUMA = (0.299, 0.587, 0.114)


def _hue_basis() -> Tensor:
    """[3, 3, 3] matrices with basis[0] + cos(a) basis[1] + sin(a) basis[2] = the RGB map that
    rotates the chroma plane (I, Q of YIQ) by the angle a and keeps luma (Y)."""
    to_yiq = torch.tensor([_LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=torch.float64)
    parts = torch.zeros(3, 3, 3, dtype=torch.float64)
    parts[0, 0, 0] = 1.0
    parts[1, 1, 1] = parts[1, 2, 2] = 1.0
    parts[2, 1, 2], parts[2, 2, 1] = -1.0, 1.0
    return (torch.linalg.inv(to_yiq) @ parts @ to_yiq).float()


_HUE_BASIS = _hue_basis()


def _hue_matrix(shift: Tensor) -> Tensor:
    """[B] hue shifts (fractions of a turn) -> [B, 3, 3] chroma rotations."""
    basis = _HUE_BASIS.to(shift.device)
    angle = (2.0 * math.pi * shift)[:, None, None]
    return basis[0] + angle.cos() * basis[1] + angle.sin() * basis[2]


def _saturation_matrix(factor: Tensor) -> Tensor:
    """[B] factors -> [B, 3, 3] colour matrices blending each pixel with its luma."""
    luma = torch.tensor(_LUMA, device=factor.device)
    f = factor.view(-1, 1, 1)
    return f * torch.eye(3, device=factor.device) + (1.0 - f) * luma.expand(3, 3)


def color_jitter(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Colour jitter with probability 0.8 per image (METHOD 7.5).

    Brightness, contrast and saturation factors ~ U[0.75, 1.25] and a hue shift ~ U[-0.25,
    0.25] of a turn. The four steps are linear in the colour, so they are composed into one
    3x3 matrix and offset per image and applied in a single batched product, clamped to [0, 1]
    once at the end: brightness scales, contrast blends with the image's mean luma,
    saturation blends each pixel with its luma, and the hue shift rotates the chroma plane
    (I, Q of YIQ) about the gray axis. images [B, 3, H, W] -> [B, 3, H, W].
    """
    b, c, h, w = images.shape
    apply = _bernoulli(b, JITTER_P, images, generator)
    brightness, contrast, saturation = (
        _uniform(b, *JITTER_RANGE, images, generator) for _ in range(3)
    )
    hue = _uniform(b, *HUE_RANGE, images, generator)
    luma = torch.tensor(_LUMA, device=images.device)
    mean_luma = torch.einsum("bchw,c->b", images.float(), luma) / (h * w)
    matrix = _hue_matrix(hue) @ _saturation_matrix(saturation)
    matrix = (contrast * brightness).view(b, 1, 1) * matrix
    offset = ((1.0 - contrast) * brightness * mean_luma).view(b, 1, 1).expand(b, c, 1)
    matrix = torch.where(apply.view(b, 1, 1), matrix, torch.eye(c, device=images.device))
    offset = torch.where(apply.view(b, 1, 1), offset, 0.0)
    flat = images.reshape(b, c, h * w)
    out = torch.baddbmm(offset.to(images.dtype), matrix.to(images.dtype), flat)
    return out.clamp_(0.0, 1.0).view(b, c, h, w)


def _blur_kernels(sigma: Tensor, radius: int) -> Tensor:
    """[N] standard deviations -> [N, 2 * radius + 1] normalised 1-D Gaussian kernels."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2.0 * sigma[:, None] ** 2))
    # Taps below 1e-7 are zeroed: a narrow kernel's outer taps would be denormal floats,
    # which make the convolution many times slower on a CPU.
    kernel = kernel.masked_fill(kernel < 1e-7, 0.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with probability 0.5 per image, sigma ~ U[0.15, 1.15] (METHOD 7.5).

    The chosen images go through one separable depthwise convolution (kernel radius
    ceil(3 * 1.15) = 4, reflection padding) in channels-last layout, where a CPU runs it
    several times faster than in the default layout; the others are untouched.
    images [B, 3, H, W] -> [B, 3, H, W].
    """
    return _blur_(images.clone(), generator)


def _blur_(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """``gaussian_blur`` writing into images."""
    b, c, h, w = images.shape
    apply = _bernoulli(b, BLUR_P, images, generator)
    sigma = _uniform(b, *BLUR_SIGMA, images, generator).to(images.dtype)
    index = apply.nonzero().squeeze(1)
    n = index.numel()
    if n == 0:
        return images
    radius = math.ceil(3 * BLUR_SIGMA[1])
    kernel = _blur_kernels(sigma[index], radius).repeat_interleave(c, dim=0)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    # The chosen images as the n * c channels of one image, channels last.
    x = images.index_select(0, index).view(1, n * c, h, w)
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    x = F.conv2d(x, kernel[:, None, radius - pad_h: radius + pad_h + 1, None], groups=n * c)
    x = F.conv2d(x, kernel[:, None, None, radius - pad_w: radius + pad_w + 1], groups=n * c)
    # Back to [n * c, h * w]: as a 2-D transpose, which torch copies in cache-sized blocks
    # (an index_copy_ straight from channels last reads with a stride and is ~2x slower).
    planar = torch.empty(n * c, h * w, dtype=x.dtype, device=x.device)
    planar.copy_(x.clamp_(0.0, 1.0).view(n * c, h * w))
    return images.index_copy_(0, index, planar.view(n, c, h, w))


def photometric(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The colour part of METHOD 7.5's strong augmentation: colour jitter (p 0.8), then blur
    (p 0.5). The flip of 7.5 is drawn with the geometry (``random_scale_crop(hflip=True)``).

    images [B, 3, H, W] in [0, 1] -> a new [B, 3, H, W] in [0, 1].
    """
    return _blur_(color_jitter(images, generator), generator)
