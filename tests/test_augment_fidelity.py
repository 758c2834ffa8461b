"""The augmentation against the authors' per-image PIL/torchvision transforms, computed here
independently on the same image with the same parameters (mean absolute difference, 0-255)."""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from prcl.data import IGNORE_INDEX, random_scale_crop
from prcl.data.unlabelled import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    _random_orders,
    adjust_hue,
    color_jitter,
    geometry_draws,
    jitter_in_order,
    scale_crop,
)

REAL_IMAGE = "realdata/VOC2012/JPEGImages/2007_000063.jpg"


def structured_image(size=192, seed=0) -> Image.Image:
    """Smooth colour, fine stripes and pixel noise: detail that aliases when shrunk."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    smooth = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0, 1, 2)], -1)
    stripes = (np.sin(2 * np.pi * (xx * 40 + yy * 13)) > 0)[..., None] * 0.3
    pixels = 0.35 + 0.3 * smooth + stripes + rng.normal(0, 0.05, (size, size, 3))
    return Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8))


@pytest.fixture(params=["structured", "voc"])
def image(request) -> Image.Image:
    if request.param == "structured":
        return structured_image()
    shared = request.getfixturevalue("shared_dir")
    real = Image.open(shared / REAL_IMAGE).convert("RGB")
    side = min(real.size)
    return real.crop((0, 0, side, side))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return TF.to_tensor(image)


def mad(ours: torch.Tensor, reference: Image.Image | torch.Tensor) -> float:
    """Mean absolute difference on the 0-255 scale; ours [3, H, W] in [0, 1]."""
    ref = as_tensor(reference) if isinstance(reference, Image.Image) else reference
    return float((ours - ref).abs().mean() * 255)


def scale_crop_one(image: torch.Tensor, scale: float, crop: int) -> torch.Tensor:
    labels = torch.zeros(1, *image.shape[-2:], dtype=torch.long)
    return random_scale_crop(image[None], labels, labels.float(), crop, (scale, scale))[0][0]


def test_half_downscale_is_antialiased_as_pil(image):
    side = image.size[0]
    half = side // 2
    reference = image.resize((half, half), Image.BILINEAR)
    ours = scale_crop_one(as_tensor(image), 0.5, half)
    assert mad(ours, reference) < 1.0
    aliased = F.interpolate(as_tensor(image)[None], size=(half, half), mode="bilinear",
                            align_corners=False)[0]
    assert mad(aliased, reference) > 1.5  # the test tells an aliased resize apart


def test_upscale_is_bilinear_as_pil(image):
    side = image.size[0]
    grown = int(1.25 * side)
    reference = image.resize((grown, grown), Image.BILINEAR)
    assert mad(scale_crop_one(as_tensor(image), 1.25, grown), reference) < 1.0


def test_reflection_padding_is_the_authors(image):
    side = image.size[0]
    crop = side + side // 3
    reference = TF.pad(image, [0, 0, crop - side, crop - side], padding_mode="reflect")
    assert mad(scale_crop_one(as_tensor(image), 1.0, crop), reference) < 1.0


@pytest.mark.parametrize("shift", [-0.25, 0.05, 0.25])
def test_hue_is_a_shift_in_hsv(image, shift):
    ours = adjust_hue(as_tensor(image)[None], torch.tensor([shift]))[0]
    assert mad(ours, TF.adjust_hue(as_tensor(image), shift)) < 1.0  # torchvision, tensors
    assert mad(ours, TF.adjust_hue(image, shift)) < 1.0  # torchvision on PIL, the authors'
    if shift == 0.25:
        assert mad(ours, as_tensor(image)) > 5.0  # the shift does something


def test_hue_equals_torchvision_to_rounding_within_a_third_of_a_turn():
    """Random colours and gray images, every shift up to the 1/3 of a turn adjust_hue
    takes (no modulo): torchvision's tensor adjust_hue to float rounding."""
    x = torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:4] = x[:4, :1]
    for shift in (-1 / 3, -0.25, -0.1, 0.0, 0.05, 0.25, 1 / 3):
        ours = adjust_hue(x, torch.full((32,), shift))
        reference = torch.stack([TF.adjust_hue(image, shift) for image in x])
        assert (ours - reference).abs().max() < 1e-5, shift


@pytest.mark.parametrize(("step", "reference"), [
    (BRIGHTNESS, TF.adjust_brightness), (CONTRAST, TF.adjust_contrast),
    (SATURATION, TF.adjust_saturation),
])
def test_linear_steps_are_torchvisions(image, step, reference):
    x = as_tensor(image)
    order = torch.tensor([[step, -1, -1, -1]])
    for factor in (0.75, 1.25):
        ours = jitter_in_order(x[None], order, torch.full((1, 3), factor), torch.zeros(1))[0]
        assert mad(ours, reference(x, factor)) < 0.05
        assert mad(ours, reference(image, factor)) < 1.0  # PIL, the authors'


def test_steps_run_in_each_images_own_order():
    x = as_tensor(structured_image(48))
    steps = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast,
             SATURATION: TF.adjust_saturation, HUE: TF.adjust_hue}
    orders = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    factors = torch.tensor([[1.25, 0.75, 1.2], [0.8, 1.25, 0.75], [1.1, 0.9, 1.25],
                            [0.75, 1.2, 0.8]])
    hue = torch.tensor([0.2, -0.15, 0.25, -0.25])
    ours = jitter_in_order(x.expand(4, -1, -1, -1), orders, factors, hue)
    for i in range(4):
        expected = x
        for step in orders[i].tolist():
            value = hue[i] if step == HUE else factors[i, step]
            expected = steps[step](expected, float(value))
        assert mad(ours[i], expected) < 0.05, i
    assert mad(ours[0], ours[1]) > 1.0  # the order matters


def test_jitter_leaves_a_fifth_exactly_as_it_was():
    images = torch.rand(2400, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    out = color_jitter(images, torch.Generator().manual_seed(1))
    changed = (out - images).abs().amax((1, 2, 3)) > 0
    assert changed.float().mean() == pytest.approx(0.8, abs=0.03)


def test_orders_are_uniform_over_the_24_permutations():
    orders = _random_orders(4800, 4, torch.empty(0), torch.Generator().manual_seed(2))
    counts = Counter(tuple(o) for o in orders.tolist())
    assert set(counts) == set(itertools.permutations(range(4)))
    # 200 expected per permutation; a binomial's standard deviation is about 14.
    assert all(abs(c - 200) < 60 for c in counts.values())


def reference_scale_crop(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int],
                         top: int, left: int, crop: int,
                         flip: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The authors' geometry on one image: resize to size (w, h), pad right and bottom to the
    crop (image reflect, label 255), crop at (top, left), mirror when flip. The image with
    PIL's bilinear resize in float (mode F: the filter, not 8-bit rounding, is compared);
    the label with PIL's nearest, and by the exact rule floor((p + 0.5) * H / h) (PIL rounds
    centres that fall exactly on a pixel border either way)."""
    channels = [Image.fromarray(c.numpy()).resize(size, Image.BILINEAR) for c in image]
    resized = torch.from_numpy(np.stack([np.array(c) for c in channels]))
    pil_label = torch.from_numpy(np.array(Image.fromarray(label.numpy().astype(np.uint8))
                                          .resize(size, Image.NEAREST))).long()
    rows = [(2 * p + 1) * label.shape[0] // (2 * size[1]) for p in range(size[1])]
    cols = [(2 * p + 1) * label.shape[1] // (2 * size[0]) for p in range(size[0])]
    exact_label = label[rows][:, cols]
    pad = (0, max(crop - size[0], 0), 0, max(crop - size[1], 0))
    out = (F.pad(resized[None], pad, mode="reflect")[0], F.pad(pil_label, pad, value=255),
           F.pad(exact_label, pad, value=255))
    out = tuple(x[..., top:top + crop, left:left + crop] for x in out)
    return tuple(x.flip(-1) for x in out) if flip else out


def test_scale_crop_is_pils_resize_pad_crop_and_flip_per_image(image):
    """Each image of a batch with its own scale (shrunk and grown), offset and flip, against
    PIL doing the same to that image alone."""
    image = image.resize((160, 160), Image.BILINEAR)
    side, crop = 160, 144
    x = as_tensor(image)
    batch = torch.stack([x, x.flip(1), x.flip(2), x.flip(1, 2)] * 2)
    labels = (torch.arange(side)[:, None] // 7 + torch.arange(side)[None] // 11) % 21
    labels = torch.stack([labels.roll(i, 0) for i in range(8)])
    geometry = geometry_draws(batch, crop, (0.5, 1.5), torch.Generator().manual_seed(3), True)
    out_images, out_labels, out_confidence = scale_crop(batch, labels, labels / 100, crop,
                                                        geometry)
    scaled = geometry.scaled_h
    assert (scaled < crop).any() and (scaled > side).any() and 0 < geometry.flip.sum() < 8
    for i in range(8):
        size = (int(geometry.scaled_w[i]), int(scaled[i]))
        image_i, pil_label, exact_label = reference_scale_crop(
            batch[i], labels[i], size, int(geometry.top[i]), int(geometry.left[i]), crop,
            bool(geometry.flip[i]))
        assert (out_images[i] - image_i).abs().amax() < 1e-4, i  # float32 vs PIL's double
        assert torch.equal(out_labels[i], exact_label), i
        assert (out_labels[i] != pil_label).float().mean() < 0.03, i
        ignored = exact_label == IGNORE_INDEX
        assert torch.equal(out_confidence[i], torch.where(ignored, 0, exact_label / 100)), i
