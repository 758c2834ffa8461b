"""The batched unlabelled pipeline of docs/method.md 7.3-7.5, on tensors, on any device.

Every function takes a batch and draws one set of random choices per image from an optional
``torch.Generator`` living on the batch's device, so the same generator state gives the same
batch. No PIL and no per-image arithmetic: geometry is a separable resample with per-image
filter weights built on the device (image: PIL's bilinear, antialiased when shrinking, as two
``embedding_bag`` row gathers; labels and confidence: one nearest-pixel gather), mixing is
masks built by broadcasting, colour jitter is batched per-image blends with gray and an HSV hue
shift, blur is a separable Gaussian as the same kind of row gathers.

Shapes: images [B, 3, H, W] float in [0, 1]; labels [B, H, W] int64 (255 = ignore);
confidence [B, H, W] float in [0, 1] (0 where ignored or padded).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

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
BLUR_RADIUS = math.ceil(3 * BLUR_SIGMA[1])
"""Gaussian kernels reach 3 sigma of the widest blur."""
FLIP_P = 0.5


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype,
                    shape: tuple[int, ...]) -> Tensor:
    """values as a tensor of ``shape`` on device, made once per device, dtype and shape: a
    tensor built from Python numbers on a GPU is a copy from the host that waits for the GPU,
    which every step would otherwise pay. Shared between callers: never written into."""
    return torch.tensor(values, device=device, dtype=dtype).view(shape)


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


def _random_orders(n: int, k: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """[n, k] int64: n uniformly random permutations of range(k), on like's device."""
    return torch.rand(n, k, generator=generator, device=like.device).argsort(dim=1)


def _bernoulli(n: int, p: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """[n] booleans, each True with probability p."""
    return torch.rand(n, generator=generator, device=like.device) < p


CPU_CHUNK_BYTES = 2 << 20
"""On the CPU the geometry and the photometric steps run over chunks of the batch of about
this size (of input images), so that their passes work in cache instead of streaming the
batch from memory each time, and their temporaries stay small enough for the allocator to
reuse (a fresh batch-sized temporary costs the CPU a page fault per 4 KiB, often more than
the pass that fills it). Elsewhere the batch goes through at once."""


def _chunk_size(images: Tensor) -> int:
    """Images per chunk of ``_chunks``: as many as fit CPU_CHUNK_BYTES on the CPU (at least
    one), else the whole batch."""
    if images.device.type != "cpu":
        return max(images.shape[0], 1)
    per_image = images[0].numel() * images.element_size()
    return max(1, CPU_CHUNK_BYTES // max(per_image, 1))


def _chunks(images: Tensor) -> list[slice]:
    """Slices of images' batch dimension: cache-sized chunks on the CPU, else the whole."""
    b, step = images.shape[0], _chunk_size(images)
    return [slice(i, min(i + step, b)) for i in range(0, b, step)]


# --- 7.3 geometry ---------------------------------------------------------------------------


def _reflect_index(index: Tensor, size: Tensor) -> Tensor:
    """Pixel indices >= 0 [B, n] folded into [0, size) [B, 1] as reflection padding does
    (torch's and numpy's ``reflect``: the edge pixel is not repeated), for any distance."""
    period = (2 * size - 2).clamp(min=1)
    folded = index.remainder(period)
    return torch.where(folded >= size, period - folded, folded)


def filter_taps(size: int, min_scale: float) -> int:
    """How many source pixels the bilinear filter of ``_resample_weights`` can touch for one
    output pixel, along an axis of ``size`` pixels rescaled by at least ``min_scale``: a
    triangle of half-width max(1, size / scaled) covers at most floor(2 * half-width) + 1
    pixels; one more absorbs rounding. A Python int from shapes and settings (no device read)."""
    half_width = max(1.0, size / max(math.floor(min_scale * size), 1))
    return min(math.floor(2.0 * half_width) + 2, size)


def _resample_weights(positions: Tensor, scaled: Tensor, size: int,
                      taps: int) -> tuple[Tensor, Tensor]:
    """PIL's bilinear resize along one axis, as weights of ``taps`` consecutive source pixels.

    The scaled axis has scaled[i] pixels over a source axis of ``size``; positions [B, n] are
    the scaled pixels each output pixel shows. Scaled pixel p covers source positions around
    centre (p + 0.5) * size / scaled; source pixel k weighs tri((k + 0.5 - centre) / a),
    a = max(1, size / scaled), tri(x) = max(0, 1 - |x|), normalised to sum 1. When shrinking
    the triangle widens by 1 / scale (PIL's and ``F.interpolate(antialias=True)``'s
    antialiasing); when growing it is plain bilinear interpolation. The taps start at the
    first pixel of positive weight, moved inside [0, size - taps].

    positions [B, n] int64, scaled [B] int64 -> (first [B, n] int64, weights [B, n, taps]
    float32).
    """
    ratio = (size / scaled.float())[:, None]  # source pixels per scaled pixel, [B, 1]
    half_width = ratio.clamp(min=1.0)
    centre = (positions + 0.5) * ratio
    first = (centre - half_width + 0.5).floor_().clamp_(0, size - taps)
    offsets = torch.arange(taps, device=positions.device, dtype=centre.dtype)
    distance = (first[..., None] + offsets + 0.5 - centre[..., None]) / half_width[..., None]
    weights = distance.abs_().neg_().add_(1.0).clamp_(min=0.0)
    return first.long(), weights / weights.sum(-1, keepdim=True)


EMBEDDING_BAG_DEVICES = ("cpu", "cuda")
"""Devices where ``F.embedding_bag`` takes ``per_sample_weights`` (MPS has no embedding_bag)."""


def weighted_rows(index: Tensor, table: Tensor, weights: Tensor) -> Tensor:
    """out[r] = sum_t weights[r, t] * table[index[r, t]]; index, weights [R, k], table [N, L]
    -> [R, L]. ``F.embedding_bag`` does it as one fused gather and weighted sum; elsewhere the
    same sum runs over an explicit [R, k, L] gather."""
    if table.device.type in EMBEDDING_BAG_DEVICES:
        return F.embedding_bag(index, table, mode="sum", per_sample_weights=weights)
    return torch.einsum("rk,rkl->rl", weights, table[index])


class Bags(NamedTuple):
    """``weighted_rows`` bags of a resample along one axis, for every image and channel of a
    batch: index [B * C * n, taps] rows of a chunk's table, weights [B * C * n, taps]."""

    index: Tensor
    weights: Tensor


def _chunk_bags(first: Tensor, weights: Tensor, channels: int, size: int,
                per_chunk: int) -> Bags:
    """``_resample_weights``'s (first [B, n], weights [B, n, taps]) as ``Bags``, made once for
    the batch: output row r of image i's channel k sums rows (((i mod per_chunk) * channels +
    k) * size + first[i, r] + t) of the [per_chunk * channels * size, L] table of i's chunk."""
    b, n, taps = weights.shape
    image = torch.arange(b, device=first.device).remainder(per_chunk)
    row0 = (image[:, None] * channels + torch.arange(channels, device=first.device)) * size
    steps = torch.arange(taps, device=first.device)
    index = row0[:, :, None, None] + first[:, None, :, None] + steps
    per_row = weights[:, None].expand(b, channels, n, taps).reshape(-1, taps)
    return Bags(index.view(-1, taps), per_row)


def _resample(images: Tensor, rows: Bags, cols: Bags, out: Tensor) -> Tensor:
    """Separable resample of one chunk, images [n, C, H, W] into out [n, C, h, w], with the
    chunk's ``Bags`` for rows and columns: each pass is one ``embedding_bag`` over the rows
    of all images and channels (a fused gather and weighted sum of whole contiguous rows, no
    dense [h, H] matrix: a batched matmul would spend ~100x the multiplications on zero
    weights). Rows first, then the columns as the rows of the transposed intermediate,
    transposed back into out."""
    n, c, _, w_in = images.shape
    h, w = out.shape[-2:]
    by_rows = weighted_rows(rows.index, images.reshape(-1, w_in), rows.weights)  # [n*C*h, W]
    by_rows = by_rows.view(n, c, h, w_in).transpose(2, 3).contiguous()
    by_cols = weighted_rows(cols.index, by_rows.view(-1, h), cols.weights)  # [n * C * w, h]
    return out.copy_(by_cols.view(n, c, w, h).transpose(2, 3))


def _nearest_source(positions: Tensor, scaled: Tensor, size: int) -> Tensor:
    """The source pixel [B, n] that contains the centre of each scaled pixel positions [B, n]
    of an axis scaled from size to scaled [B] pixels: floor((p + 0.5) * size / scaled), in
    integers, so exact (a centre on a pixel border belongs to the pixel that starts there)."""
    return ((2 * positions + 1) * size).div(2 * scaled[:, None], rounding_mode="floor")


def _padded_pixel_index(source_rows: Tensor, source_cols: Tensor, height: int,
                        width: int) -> Tensor:
    """[B, h, w] int32 positions of the pixels source_rows [B, h] x source_cols [B, w] in a
    flattened [B, height + 1, width + 1] batch (``_gather_padded``'s table)."""
    b = source_rows.shape[0]
    image0 = torch.arange(b, device=source_rows.device)[:, None] * ((height + 1) * (width + 1))
    row0 = (image0 + source_rows * (width + 1)).int()
    return row0[:, :, None] + source_cols.int()[:, None, :]  # int32: half an int64's traffic


def _gather_padded(maps: Tensor, index: Tensor, fill: float, out: Tensor) -> Tensor:
    """maps [B, H, W] at index [B, h, w] (``_padded_pixel_index``) into out [B, h, w] of
    maps' dtype, exact; row H and column W, one past the end, read ``fill``. One gather from
    maps padded with a row and a column of ``fill``: the padding needs no mask, no second
    pass."""
    table = F.pad(maps, (0, 1, 0, 1), value=fill)
    torch.index_select(table.view(-1), 0, index.view(-1), out=out.view(-1))
    return out


class Geometry(NamedTuple):
    """One scale-pad-crop-flip per image (``random_scale_crop``), all [B] int64 or bool on the
    batch's device, and the tap count of the resampling filter (``filter_taps``)."""

    scaled_h: Tensor
    scaled_w: Tensor
    top: Tensor
    left: Tensor
    flip: Tensor
    taps_h: int
    taps_w: int


def geometry_draws(
    images: Tensor, crop_size: int, scale_range: tuple[float, float],
    generator: torch.Generator | None = None, hflip: bool = False,
) -> Geometry:
    """random_scale_crop's random choices (docs/method.md 7.3) for images [B, 3, H, W]: per image
    the scale s ~ U(scale_range), the scaled size floor(s * H) x floor(s * W) (at least 1),
    the crop's top and left corner uniform over the padded scaled image, and with hflip a
    fair coin."""
    b, _, h, w = images.shape
    scale = _uniform(b, scale_range[0], scale_range[1], images, generator)
    scaled_h = (scale * h).floor().clamp(min=1).long()
    scaled_w = (scale * w).floor().clamp(min=1).long()
    top = _randint(scaled_h.clamp(min=crop_size) - crop_size + 1, generator)
    left = _randint(scaled_w.clamp(min=crop_size) - crop_size + 1, generator)
    flip = (_bernoulli(b, FLIP_P, images, generator) if hflip
            else torch.zeros(b, dtype=torch.bool, device=images.device))
    low = min(scale_range)
    return Geometry(scaled_h, scaled_w, top, left, flip, filter_taps(h, low), filter_taps(w, low))


def scale_crop(images: Tensor, labels: Tensor, confidence: Tensor, crop_size: int,
               geometry: Geometry) -> Batch:
    """Apply one ``Geometry`` per image (``random_scale_crop`` draws it; docs/method.md 7.3 and the
    flip of 7.5), on the device.

    For each axis the crop's pixels are mapped to pixels of the scaled image (reflected back
    into it where they fall in the padding, and the columns reversed where flipped), then to
    source pixels: the image by PIL's bilinear filter (``_resample_weights``, separable,
    ``_resample``), label and confidence by the source pixel containing the centre (255 and
    0 in the padding). Every size and offset stays a tensor: nothing is read back to the
    host. On the CPU the images go through in chunks (``_chunks``).

    images [B, 3, H, W], labels [B, H, W], confidence [B, H, W] ->
    [B, 3, crop, crop], [B, crop, crop], [B, crop, crop].
    """
    b, c, h, w = images.shape
    steps = torch.arange(crop_size, device=images.device)
    row_in_scaled = geometry.top[:, None] + steps  # [B, crop], before reflection
    col_in_scaled = geometry.left[:, None] + steps
    col_in_scaled = torch.where(geometry.flip[:, None], col_in_scaled.flip(1), col_in_scaled)
    rows = _reflect_index(row_in_scaled, geometry.scaled_h[:, None])
    cols = _reflect_index(col_in_scaled, geometry.scaled_w[:, None])
    row_weights = _resample_weights(rows, geometry.scaled_h, h, geometry.taps_h)
    col_weights = _resample_weights(cols, geometry.scaled_w, w, geometry.taps_w)
    # Label and confidence pixels in the padding read one past the end: the fill.
    source_rows = torch.where(row_in_scaled < geometry.scaled_h[:, None],
                              _nearest_source(rows, geometry.scaled_h, h), h)
    source_cols = torch.where(col_in_scaled < geometry.scaled_w[:, None],
                              _nearest_source(cols, geometry.scaled_w, w), w)
    out_images = images.new_empty(b, c, crop_size, crop_size)
    out_labels = labels.new_empty(b, crop_size, crop_size)
    out_confidence = confidence.new_empty(b, crop_size, crop_size)
    per_chunk = _chunk_size(images)
    row_bags = _chunk_bags(row_weights[0], row_weights[1].to(images.dtype), c, h, per_chunk)
    col_bags = _chunk_bags(col_weights[0], col_weights[1].to(images.dtype), c, w, per_chunk)
    for part in _chunks(images):
        bags = slice(part.start * c * crop_size, part.stop * c * crop_size)
        _resample(images[part], Bags(*(x[bags] for x in row_bags)),
                  Bags(*(x[bags] for x in col_bags)), out_images[part])
        index = _padded_pixel_index(source_rows[part], source_cols[part], h, w)
        _gather_padded(labels[part], index, IGNORE_INDEX, out_labels[part])
        _gather_padded(confidence[part], index, 0.0, out_confidence[part])
    return out_images, out_labels, out_confidence


def random_scale_crop(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    crop_size: int,
    scale_range: tuple[float, float],
    generator: torch.Generator | None = None,
    hflip: bool = False,
) -> Batch:
    """Random scale, pad to the crop size and random crop, one transform per image
    (docs/method.md 7.3), and with ``hflip`` the horizontal flip of 7.5 (p 0.5 per image).

    Each image is rescaled by s ~ U(scale_range) to floor(s * H) x floor(s * W) (the image
    bilinear, antialiased when shrinking, as PIL's resize; label and confidence nearest),
    padded on the right and bottom up to crop_size when smaller (image: reflection without
    repeating the edge pixel; label: 255; confidence: 0), cropped at a random offset and,
    with hflip, mirrored; image, label and confidence share the transform
    (``geometry_draws``, then ``scale_crop``). The flip only reverses the crop's column
    order, so it costs nothing.

    docs/method.md 7.5 flips after mixing; flipping here instead is the same flip per image, except
    that the pixels an image takes from its mixing partner carry the partner's coin rather
    than its own (both are fair coins, independent of the pixels).

    images [B, 3, H, W], labels [B, H, W], confidence [B, H, W] ->
    [B, 3, crop, crop], [B, crop, crop], [B, crop, crop].
    """
    geometry = geometry_draws(images, crop_size, scale_range, generator, hflip)
    return scale_crop(images, labels, confidence, crop_size, geometry)


# --- 7.4 mixing -----------------------------------------------------------------------------


def classmix_mask(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Pixels of a random half (floor) of each image's classes (docs/method.md 7.4, ClassMix).

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
    """A random rectangle of about half the image area per image (docs/method.md 7.4,
    CutMix/CutOut).

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


def mix_mask(labels: Tensor, mode: str, generator: torch.Generator | None = None) -> Tensor | None:
    """mix's random choice for labels [B, H, W] (docs/method.md 7.4): [B, H, W] bool, True where
    image i keeps its own pixel (classmix, cutmix) or where it is cut out (cutout); None for
    none. The draws are those ``mix`` makes."""
    if mode not in MIX_MODES:
        raise ValueError(f"mix mode '{mode}': choose from {', '.join(MIX_MODES)}")
    if mode == "none":
        return None
    if mode == "classmix":
        return classmix_mask(labels, generator)
    box = box_mask(*labels.shape, labels.device, generator)
    return box if mode == "cutout" else ~box


def mix(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    mode: str,
    generator: torch.Generator | None = None,
    partner: Batch | None = None,
) -> Batch:
    """Mix each image with a partner image (docs/method.md 7.4).

    classmix: image i keeps the pixels of a random half (floor) of its pseudo-classes and takes
    the rest from its partner; cutmix: a random rectangle of half the area comes from the
    partner; cutout: a random rectangle of half the area is zeroed, its labels set to 255 and
    its confidence to 0 (no partner); none: unchanged. Labels and confidence move with the
    pixels. The partner of image i is image (i + 1) % B unless ``partner`` gives
    (images, labels, confidence) of the same shapes to paste from, row i for image i.
    """
    mask = mix_mask(labels, mode, generator)
    if mask is None:
        return images, labels, confidence
    if mode == "cutout":
        return _cut_out_(images.clone(), labels.clone(), confidence.clone(), mask)
    own = (images, labels, confidence)
    masks = _paste_masks(mask, images, confidence)
    if partner is not None:
        return tuple(_paste(k, x, p) for k, x, p in zip(masks, own, partner, strict=True))
    return tuple(_paste_from_next(k, x) for k, x in zip(masks, own, strict=True))


def _cut_out_(images: Tensor, labels: Tensor, confidence: Tensor, cut: Tensor) -> Batch:
    """Cutout (docs/method.md 7.4) written into its inputs: images 0, labels 255 and confidence 0
    where cut [B, H, W]."""
    images.masked_fill_(cut[:, None], 0.0)
    labels.masked_fill_(cut, IGNORE_INDEX)
    confidence.masked_fill_(cut, 0.0)
    return images, labels, confidence


def _paste_masks(keep: Tensor, images: Tensor, confidence: Tensor) -> Batch:
    """keep [B, H, W] bool as the masks ``_paste`` takes for images, labels and confidence:
    converted once to the floating-point dtype (lerp's weight), with a channel axis for the
    images."""
    weight = keep.to(images.dtype)
    return weight[:, None], keep, weight.to(confidence.dtype)


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
"""ITU-R 601 luma, PIL's grayscale: the gray that contrast and saturation blend with."""
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)
_HUE_CENTRES = (0.0, 2.0, 4.0)
"""Where red, green and blue peak on the hexagon of hues, in sixths of a turn."""


def adjust_hue(images: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """Shift each image's hue by shift[i] of a turn in HSV, keeping saturation and value: what
    ``torchvision.transforms.functional.adjust_hue`` does to one image, batched.

    The hue is the position on the hexagon of the maximum (value) and minimum channels, in
    sixths of a turn: (g - b) / chroma where red is the maximum, 2 + (b - r) / chroma where
    green is (and red is not), 4 + (r - g) / chroma otherwise, in [-1, 5]. The shifted
    colour keeps the maximum and the minimum; channel k sits between them by how far the
    new hue h is from its centre c_k (0, 2, 4) around the circle of 6: min + chroma *
    clamp(||h - c_k| - 3| - 1, 0, 1), the maximum within one sixth of c_k, the minimum from
    two sixths on. That triangle is right for |h - c_k| < 7, not only within one turn, so
    for shifts within 1/3 of a turn either way (colour jitter's are within 1/4) h needs no
    modulo. Gray pixels (chroma 0) stay as they are. Only plain arithmetic, no ``where``:
    which channel is the maximum is ceil(max - channel), exactly 0 or 1 for values in
    [0, 1], and a CPU runs these passes several times faster than selections (the maximum
    and minimum too: two ``maximum`` passes beat one ``amax`` over the channels).
    images [N, 3, H, W] in [0, 1], shift [N] in [-1/3, 1/3] -> out [N, 3, H, W] when given
    (it may be images' storage), else a new tensor.
    """
    r, g, b = images.split(1, dim=1)
    high = torch.maximum(r, g)
    high = torch.maximum(high, b, out=high)
    low = torch.minimum(r, g)
    low = torch.minimum(low, b, out=low)
    chroma = high - low
    red_not_max = torch.sub(high, r).ceil_()
    green_not_max = torch.sub(high, g).ceil_()
    red_max = g - b
    green_max = torch.sub(b, r).add_(chroma, alpha=2.0)
    blue_max = torch.sub(r, g).add_(chroma, alpha=4.0)
    hue = blue_max.sub_(green_max).mul_(green_not_max).add_(green_max)
    hue = hue.sub_(red_max).mul_(red_not_max).add_(red_max).div_(chroma.clamp(min=1e-30))
    # h - c_k with h shifted by at most 2 sixths either way: no modulo (see above).
    centres = device_constant(_HUE_CENTRES, images.device, images.dtype, (1, 3, 1, 1))
    centres = centres - (6.0 * shift).view(-1, 1, 1, 1).to(images.dtype)  # [N, 3, 1, 1]
    # min + chroma * clamp(t - 1, 0, 1) as (min - chroma) + chroma * clamp(t, 1, 2), the
    # ramp written where the result goes (images are read no more).
    ramp = torch.sub(hue, centres, out=out) if out is not None else hue - centres
    ramp.abs_().sub_(3.0).abs_().clamp_(1.0, 2.0)
    return torch.addcmul(low.sub_(chroma), ramp, chroma, out=ramp)


class LinearSteps(NamedTuple):
    """Each image's linear step at each of the four positions of its order, as torchvision's
    brightness, contrast and saturation are before their [0, 1] clamping: the image scaled by
    its factor f plus a gray the same in every channel, step(x) = scale * x + to_gray . x +
    to_mean_gray . mean(x), where mean(x) is the channel means of the image as it is then.

    Brightness: scale f (a blend with black); saturation: scale f and to_gray = (1 - f) luma
    (a blend with the pixel's gray); contrast: scale f and to_mean_gray = (1 - f) luma (a
    blend with the image's mean gray); HUE and -1: the identity (scale 1). scale [B, 4, 1, 1],
    to_gray and to_mean_gray [B, 4, 1, 3], shaped to broadcast over [B, 3, pixels] at each
    position (docs/method.md 7.5)."""

    scale: Tensor
    to_gray: Tensor
    to_mean_gray: Tensor


def _linear_steps(order: Tensor, factors: Tensor) -> LinearSteps:
    """``LinearSteps`` of images taking the steps order [B, 4] (int64, -1 for none) with
    their brightness, contrast and saturation factors [B, 3]. Built once per batch."""
    linear = (order >= BRIGHTNESS) & (order <= SATURATION)
    f = torch.where(linear, factors.gather(1, order.clamp(0, SATURATION)), 1.0)[..., None, None]
    luma = device_constant(_LUMA, factors.device, factors.dtype, (1, 1, 1, 3))
    to_gray = torch.where((order == SATURATION)[..., None, None], 1.0 - f, 0.0) * luma
    to_mean_gray = torch.where((order == CONTRAST)[..., None, None], 1.0 - f, 0.0) * luma
    return LinearSteps(f, to_gray, to_mean_gray)


PLANNED_DEVICES = ("cpu",)
"""Devices where ``_jitter`` reads each chunk's order of steps to leave out the work that
would be the identity: free on the CPU, a wait for the device elsewhere."""
_LINEAR = frozenset((BRIGHTNESS, CONTRAST, SATURATION))
_ANY_STEP = frozenset((BRIGHTNESS, CONTRAST, SATURATION, HUE))


def _jitter(images: Tensor, linear: LinearSteps, order: Tensor, hue: Tensor,
            out: Tensor | None = None) -> Tensor:
    """The four positions of ``jitter_in_order`` on images [N, 3, H, W], with the steps of
    ``_linear_steps`` (``LinearSteps`` of N images), order [N, 4] (which step each image
    takes at each position) and hue [N].

    At each position one batched step applies every image's linear step there (the
    identity for the others: exact) with ``_linear_step``, then ``adjust_hue`` runs on the
    images whose hue shift comes there. On ``PLANNED_DEVICES`` a position none of whose
    images takes a linear step skips it, and the step is only as general as the steps
    there need. Writes into out [N, 3, H, W] when given, never into images otherwise; when
    out is images' own storage every step runs in place there. Returns the jittered
    images."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h * w)
    planned = order.tolist() if images.device.type in PLANNED_DEVICES else None
    steps_at = [_ANY_STEP if planned is None else {row[p] for row in planned} for p in range(4)]
    last = max((p for p, steps in enumerate(steps_at) if steps), default=-1)
    target = None if out is None else out.view(n, c, h * w)
    # Whether x is _jitter's to write into: out itself, or a tensor of its own.
    own = target is not None and (target.data_ptr(), target.stride()) == (x.data_ptr(), x.stride())
    for position, steps in enumerate(steps_at):
        # The last step writes into out, unless out is the storage that step reads; the
        # others write into x when it is _jitter's own.
        writes_out = (target is not None and position == last
                      and (own or target.data_ptr() != x.data_ptr()))
        into = target if writes_out else (x if own else None)
        if steps & _LINEAR:
            x = _linear_step(x, LinearSteps(*(t[:, position] for t in linear)), steps, into)
            own, into = True, x  # x is out itself when this step wrote out
        if steps == {HUE}:  # every image shifts its hue here: no subset to pick
            shifted_into = None if into is None else into.view(n, c, h, w)
            x, own = adjust_hue(x.view(n, c, h, w), hue, shifted_into).view(n, c, h * w), True
            continue
        shifted = (order[:, position] == HUE).nonzero().squeeze(1) if HUE in steps else None
        if shifted is not None and shifted.numel():  # index_select/index_copy: faster than
            shaped = x.view(n, c, h, w)                # x[shifted] = ...
            picked = shaped.index_select(0, shifted)
            moved = adjust_hue(picked, hue[shifted], picked)
            copy = shaped.index_copy_ if own else shaped.index_copy
            x, own = copy(0, shifted, moved).view(n, c, h * w), True
    if target is not None and x.data_ptr() != target.data_ptr():
        target.copy_(x)
        return out
    return x.view(n, c, h, w)


def _linear_step(x: Tensor, step: LinearSteps, steps: frozenset[int] | set[int],
                 out: Tensor | None = None) -> Tensor:
    """One position of ``_jitter``: clamp(scale x + to_gray . x + to_mean_gray . mean(x), 0,
    1) per image, x [N, 3, P], step: ``LinearSteps`` at this position (scale [N, 1, 1],
    to_gray and to_mean_gray [N, 1, 3]), into out [N, 3, P] (x itself allowed) or a new
    tensor. ``steps`` says which steps the images take here: the gray is only needed with
    saturation, the channel means only with contrast."""
    gray = None  # [N, 1, P] or [N, 1, 1], the same in every channel
    if SATURATION in steps:
        gray = torch.bmm(step.to_gray, x)
    if CONTRAST in steps:
        mean_gray = torch.bmm(step.to_mean_gray, x.mean(-1, keepdim=True))
        gray = mean_gray if gray is None else gray.add_(mean_gray)
    if gray is None:
        return torch.mul(x, step.scale, out=out).clamp_(0.0, 1.0)
    # A contrast's gray [N, 1, 1] is spread over the pixels first: addcmul with two operands
    # broadcast along the pixels runs a CPU's scalar loop, four times slower.
    gray = gray.expand(-1, -1, x.shape[-1]).contiguous()
    return torch.addcmul(gray, x, step.scale, out=out).clamp_(0.0, 1.0)


def _jitter_draws(b: int, like: Tensor, generator: torch.Generator | None) -> Batch:
    """color_jitter's random choices for b images: (order [b, 4] with -1 rows for the images
    left as they are, factors [b, 3], hue [b])."""
    apply = _bernoulli(b, JITTER_P, like, generator)
    factors = torch.stack([_uniform(b, *JITTER_RANGE, like, generator) for _ in range(3)], 1)
    hue = _uniform(b, *HUE_RANGE, like, generator)
    order = _random_orders(b, 4, like, generator)
    return torch.where(apply[:, None], order, -1), factors, hue


def color_jitter(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Colour jitter with probability 0.8 per image (docs/method.md 7.5), as torchvision's
    ``ColorJitter(0.25, 0.25, 0.25, 0.25)`` jitters each image in the authors' code:
    brightness, contrast and saturation factors ~ U[0.75, 1.25] and a hue shift ~ U[-0.25,
    0.25] of a turn in HSV, the four in a random order drawn per image (``jitter_in_order``).
    images [B, 3, H, W] -> [B, 3, H, W].
    """
    return jitter_in_order(images, *_jitter_draws(images.shape[0], images, generator))


def jitter_in_order(images: Tensor, order: Tensor, factors: Tensor, hue: Tensor) -> Tensor:
    """Image i goes through the steps order[i] (BRIGHTNESS, CONTRAST, SATURATION or HUE; -1
    skips a position) with its brightness, contrast and saturation factors[i] and hue shift
    hue[i], each step as torchvision's, clamped to [0, 1] (``_linear_steps``, ``_jitter``).

    images [B, 3, H, W], order [B, 4] int64, factors [B, 3], hue [B] -> [B, 3, H, W].
    """
    return _jitter(images, _linear_steps(order, factors.to(images.dtype)), order, hue)


def _blur_kernels(sigma: Tensor, radius: int) -> Tensor:
    """[N] standard deviations -> [N, 2 * radius + 1] normalised 1-D Gaussian kernels."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2.0 * sigma[:, None] ** 2))
    # Taps below 1e-7 are zeroed: a narrow kernel's outer taps would be denormal floats,
    # which make the arithmetic many times slower on a CPU.
    kernel = kernel.masked_fill(kernel < 1e-7, 0.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def _blur_draws(b: int, like: Tensor, generator: torch.Generator | None) -> Batch:
    """gaussian_blur's random choices for b images: (blurred [b] bool, sigma [b])."""
    apply = _bernoulli(b, BLUR_P, like, generator)
    return apply, _uniform(b, *BLUR_SIGMA, like, generator).to(like.dtype)


def gaussian_blur(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with probability 0.5 per image, sigma ~ U[0.15, 1.15] (docs/method.md 7.5).

    The chosen images go through a separable Gaussian (kernel radius ceil(3 * 1.15) = 4,
    reflection padding, ``_blur_``); the others are untouched.
    images [B, 3, H, W] -> [B, 3, H, W].
    """
    apply, sigma = _blur_draws(images.shape[0], images, generator)
    return _blur_(images.clone(), apply, _blur_kernels(sigma, BLUR_RADIUS))



def _reflected_taps(n: int, radius: int, device: torch.device) -> Tensor:
    """[n, 2 * radius + 1] int64: the pixels under a kernel centred on each of n pixels,
    reflected into [0, n) as reflection padding does (without repeating the edge)."""
    near = torch.arange(n, device=device)[:, None] + torch.arange(-radius, radius + 1,
                                                                  device=device)
    return _reflect_index(near.abs(), torch.full((), n, device=device))


def _blur_dim1(planes: Tensor, chosen: Tensor, kernels: Tensor, taps: Tensor) -> Tensor:
    """planes[chosen] [m, N, L] convolved along N with kernels [m, k] at the rows taps
    [N, k] (``_reflected_taps``) -> [m, N, L]. One ``embedding_bag`` gathers and weighs
    whole rows straight from planes [P, N, L] (no copy of the chosen planes, no padded copy:
    the reflection is in the row indices). A CPU runs this several times faster than a
    depthwise convolution along either axis."""
    _, n, length = planes.shape
    m, k = kernels.shape
    row_index = (chosen[:, None, None] * n + taps).view(-1, k)
    weights = kernels.to(planes.dtype)[:, None, :].expand(m, n, k).reshape(-1, k)
    return weighted_rows(row_index, planes.reshape(-1, length), weights).view(m, n, length)


def _blur_(images: Tensor, apply: Tensor, kernels: Tensor,
           taps: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Blur (docs/method.md 7.5) images [B, 3, H, W] where apply [B] with kernels
    [B, 2 * radius + 1]
    (``_blur_kernels``), writing into images: along H (``_blur_dim1``), then along W as
    along H of the transpose, clamped to [0, 1]. taps: ``_reflected_taps`` for H and W
    (computed here unless given). An image smaller than the kernel along an axis uses the
    kernel's middle taps only there."""
    _, c, h, w = images.shape
    index = apply.nonzero().squeeze(1)
    n = index.numel()
    if n == 0:
        return images
    radius = kernels.shape[1] // 2
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    if taps is None:
        taps = (_reflected_taps(h, pad_h, images.device), _reflected_taps(w, pad_w, images.device))
    per_plane = kernels.index_select(0, index).repeat_interleave(c, dim=0)
    chosen = (index[:, None] * c + torch.arange(c, device=images.device)).view(-1)
    x = _blur_dim1(images.view(-1, h, w), chosen,
                   per_plane[:, radius - pad_h: radius + pad_h + 1], taps[0])
    x = _blur_dim1(x.transpose(1, 2).contiguous(), torch.arange(n * c, device=images.device),
                   per_plane[:, radius - pad_w: radius + pad_w + 1], taps[1])  # [n * c, W, H]
    blurred = x.clamp_(0.0, 1.0).view(n, c, w, h).transpose(2, 3)
    return images.index_copy_(0, index, blurred)


class PhotometricDraws(NamedTuple):
    """photometric's random choices for a batch, made once (docs/method.md 7.5): the colour steps of
    ``_linear_steps`` (``LinearSteps``), each image's order of steps
    (order [B, 4], ``_jitter_draws``) and hue shift (hue [B]), which images are blurred
    (blurred [B] bool) with which kernel (kernels [B, 2 * BLUR_RADIUS + 1]), and the
    reflected blur taps along H and W (``_reflected_taps``)."""

    linear: LinearSteps
    order: Tensor
    hue: Tensor
    blurred: Tensor
    kernels: Tensor
    taps: tuple[Tensor, Tensor]


def _photometric_draws(images: Tensor, generator: torch.Generator | None = None
                      ) -> PhotometricDraws:
    """photometric's random choices, colour steps and kernels for images [B, 3, H, W]."""
    b, _, h, w = images.shape
    order, factors, hue = _jitter_draws(b, images, generator)
    blurred, sigma = _blur_draws(b, images, generator)
    linear = _linear_steps(order, factors.to(images.dtype))
    taps = (_reflected_taps(h, min(BLUR_RADIUS, h - 1), images.device),
            _reflected_taps(w, min(BLUR_RADIUS, w - 1), images.device))
    return PhotometricDraws(linear, order, hue, blurred,
                            _blur_kernels(sigma, BLUR_RADIUS), taps)


def _photometric_into(images: Tensor, draws: PhotometricDraws, part: slice, out: Tensor) -> None:
    """Jitter and blur images [n, 3, H, W], the images ``part`` of the batch ``draws`` was
    made for, into out [n, 3, H, W] (which may be images' own storage)."""
    _jitter(images, LinearSteps(*(t[part] for t in draws.linear)), draws.order[part],
            draws.hue[part], out)
    _blur_(out, draws.blurred[part], draws.kernels[part], draws.taps)


def photometric(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The colour part of docs/method.md 7.5's strong augmentation: colour jitter (p 0.8), then blur
    (p 0.5). The flip of 7.5 is drawn with the geometry (``random_scale_crop(hflip=True)``).
    All random choices, colour steps and blur kernels are made for the batch first
    (``_photometric_draws``), then the steps run chunk by chunk (``_chunks``), each chunk's
    last colour step writing into the output.

    images [B, 3, H, W] in [0, 1] -> a new [B, 3, H, W] in [0, 1].
    """
    draws = _photometric_draws(images, generator)
    out = torch.empty_like(images, memory_format=torch.contiguous_format)
    for part in _chunks(images):
        _photometric_into(images[part], draws, part, out[part])
    return out


# --- 7.3-7.5 together -----------------------------------------------------------------------


def strong_augment(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    crop_size: int,
    scale_range: tuple[float, float],
    mix_mode: str,
    generator: torch.Generator | None = None,
    partners: Callable[[Tensor, Tensor, Tensor], Batch] | None = None,
) -> Batch:
    """The unlabelled batch's whole pipeline (docs/method.md 7.3-7.5): ``random_scale_crop``
    with the flip, ``mix`` and ``photometric``, with the same random draws in the same order as
    those three calls, so the same batch; ``partners`` (several processes) maps the cropped
    batch to each image's mixing partner, as ``mix``'s ``partner``.

    After the crop, each chunk (``_chunks``) is mixed straight into the crop's own storage,
    where the colour steps then run in place (when the chunk's partners are rows of the
    chunk itself, its images are mixed into a chunk-sized temporary that the colour steps
    read and write back), so the only batch-sized tensors are the crop's three outputs and
    the mixing mask: on the CPU every further batch-sized tensor costs a page fault per
    4 KiB and a pass through memory rather than cache. The crop's image 0 is kept aside
    first, since image B - 1 mixes with it after it has been written.

    images [B, 3, H, W], labels [B, H, W], confidence [B, H, W] ->
    [B, 3, crop, crop], [B, crop, crop], [B, crop, crop].
    """
    geometry = geometry_draws(images, crop_size, scale_range, generator, hflip=True)
    cropped = scale_crop(images, labels, confidence, crop_size, geometry)
    partner = partners(*cropped) if partners is not None else None
    mask = mix_mask(cropped[1], mix_mode, generator)
    draws = _photometric_draws(cropped[0], generator)
    if mix_mode in ("cutout", "none"):
        if mix_mode == "cutout":
            _cut_out_(*cropped, mask)
        for part in _chunks(cropped[0]):
            _photometric_into(cropped[0][part], draws, part, cropped[0][part])
        return cropped
    # Image 0 as it is before any chunk writes it: the partner of image B - 1.
    first = None if partner is not None else tuple(x[:1].clone() for x in cropped)
    for part in _chunks(cropped[0]):
        masks = _paste_masks(mask[part], cropped[0], cropped[2])
        partners_of = [_partner_rows(x, part, partner, first, which)
                       for which, x in enumerate(cropped)]
        # Mixed straight into place, unless the partners are rows of the chunk; the colour
        # steps then run in place too.
        overlap = partner is None and part.stop - part.start > 1
        images = cropped[0][part]
        mixed = _paste(masks[0], images, partners_of[0], out=None if overlap else images)
        _photometric_into(mixed, draws, part, images)
        for k, x, p in zip(masks[1:], cropped[1:], partners_of[1:], strict=True):
            if overlap:
                x[part].copy_(_paste(k, x[part], p))
            else:
                _paste(k, x[part], p, out=x[part])
    return cropped


def _partner_rows(own: Tensor, part: slice, partner: Batch | None, first: Batch | None,
                  which: int) -> Tensor:
    """The mixing partners of the images ``part`` of own (the batch's tensor number which:
    images, labels or confidence): rows of ``partner`` when given, else own[(i + 1) % B],
    where row 0 comes from ``first`` (its copy made before own was written)."""
    if partner is not None:
        return partner[which][part]
    if part.stop < own.shape[0]:
        return own[part.start + 1: part.stop + 1]
    return torch.cat([own[part.start + 1:], first[which]])
