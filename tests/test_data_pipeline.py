"""The batched unlabelled pipeline and the per-sample transforms (docs/method.md 7.3-7.5)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from prcl.data import (
    IGNORE_INDEX,
    LabelledTransform,
    RandomCrop,
    classmix_mask,
    denormalize,
    mix,
    normalize,
    photometric,
    random_scale_crop,
    strong_augment,
    unlabelled,
)
from prcl.data.unlabelled import color_jitter, gaussian_blur

NUM_CLASSES = 6
COLOURS = torch.tensor(
    [[0.1, 0.2, 0.3], [0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.8, 0.8, 0.1],
     [0.6, 0.2, 0.7]]
)


def drawn_batch(b=4, h=72, w=96, seed=0):
    """Labels of 12x12 blocks with some ignore blocks; the image paints each class's colour;
    the confidence encodes the label, (label + 1) / 300, and 0 where ignored."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, NUM_CLASSES + 1, (b, 1, h // 12, w // 12), generator=g)
    labels = F.interpolate(blocks.float(), size=(h, w), mode="nearest")[:, 0].long()
    labels[labels == NUM_CLASSES] = IGNORE_INDEX
    images = COLOURS[labels.clamp(max=NUM_CLASSES - 1)].permute(0, 3, 1, 2).contiguous()
    return images, labels, encode(labels)


def encode(labels):
    return torch.where(labels == IGNORE_INDEX, 0.0, (labels.float() + 1) / 300)


def interior(labels, radius=2):
    """Pixels whose (2r+1)^2 neighbourhood holds one label (away from every edge)."""
    x = labels.float()[:, None]
    k = 2 * radius + 1
    high = F.max_pool2d(x, k, stride=1, padding=radius)
    low = -F.max_pool2d(-x, k, stride=1, padding=radius)
    inner = torch.zeros_like(labels, dtype=torch.bool)
    inner[:, radius:-radius, radius:-radius] = True
    return (high == low)[:, 0] & inner & (labels != IGNORE_INDEX)


def assert_drawn_aligned(images, labels, min_fraction=0.05):
    """At interior pixels the image still shows its label's colour."""
    inner = interior(labels)
    assert inner.float().mean() > min_fraction
    expected = COLOURS[labels[inner]]
    torch.testing.assert_close(images.permute(0, 2, 3, 1)[inner], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", [(0.5, 0.8), (1.0, 1.0), (1.2, 1.9)])
def test_scale_crop_keeps_image_label_and_confidence_aligned(scale):
    images, labels, conf = drawn_batch()
    g = torch.Generator().manual_seed(1)
    out = random_scale_crop(images, labels, conf, 48, scale, generator=g)
    assert out[0].shape == (4, 3, 48, 48) and out[1].shape == (4, 48, 48)
    assert out[1].dtype == torch.int64 and out[2].dtype == torch.float32
    assert_drawn_aligned(out[0], out[1])
    assert torch.equal(out[2], encode(out[1]))  # confidence moved with the label, ignore kept


def test_scale_one_is_an_exact_crop():
    images, labels, conf = drawn_batch(b=1)
    images = torch.rand_like(images)
    out_images, out_labels, _ = random_scale_crop(images, labels, conf, 32, (1.0, 1.0))
    matches = [
        (top, left)
        for top in range(72 - 32 + 1)
        for left in range(96 - 32 + 1)
        if torch.equal(out_labels[0], labels[0, top:top + 32, left:left + 32])
        and torch.allclose(out_images[0], images[0, :, top:top + 32, left:left + 32], atol=1e-5)
    ]
    assert matches


def test_padding_is_reflected_in_the_image_and_ignored_in_label_and_confidence():
    images, labels, conf = drawn_batch(b=2, h=32, w=32)
    labels.fill_(1)
    conf = encode(labels)
    out_images, out_labels, out_conf = random_scale_crop(images, labels, conf, 48, (0.5, 0.5))
    padded = out_labels == IGNORE_INDEX
    assert padded.float().mean() == pytest.approx(1 - (16 * 16) / (48 * 48))
    assert torch.all(out_conf[padded] == 0) and torch.all(out_conf[~padded] > 0)
    assert (out_images.permute(0, 2, 3, 1)[padded].sum(-1) > 0).all()  # reflected, not zeros


def test_padding_follows_the_flip():
    images, labels, _ = drawn_batch(b=16, h=32, w=32)
    labels.fill_(1)
    _, out_labels, out_conf = random_scale_crop(
        images, labels, encode(labels), 48, (0.5, 0.5), torch.Generator().manual_seed(0),
        hflip=True,
    )
    steps = torch.arange(48)
    below = steps[:, None] >= 16
    on_the_right, on_the_left = below | (steps[None] >= 16), below | (steps[None] < 32)
    sides = []
    for i in range(16):
        padded = out_labels[i] == IGNORE_INDEX
        assert torch.equal(padded, on_the_right) or torch.equal(padded, on_the_left)
        assert torch.equal(out_conf[i] == 0, padded)
        sides.append(torch.equal(padded, on_the_left))
    assert 0 < sum(sides) < 16


def test_padding_reflects_without_repeating_the_edge_pixel():
    images = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, 20, 20, dtype=torch.long)
    out, out_labels, _ = random_scale_crop(images, labels, labels.float(), 24, (1.0, 1.0))
    reference = F.pad(images, (0, 4, 0, 4), mode="reflect")  # torch's and numpy's 'reflect'
    expected = np.pad(images.numpy(), ((0, 0), (0, 0), (0, 4), (0, 4)), mode="reflect")
    assert np.array_equal(reference.numpy(), expected)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    assert (out[:, :, :20, 20] - images[:, :, :, 19]).abs().amax() > 0.1  # edge not repeated
    assert torch.all(out_labels[:, 20:] == IGNORE_INDEX) and torch.all(out_labels[:, :20, :20] == 0)


def test_padding_wider_than_the_image_keeps_reflecting():
    images = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 3, 5, 5).contiguous() / 4
    labels = torch.zeros(1, 5, 5, dtype=torch.long)
    out = random_scale_crop(images, labels, labels.float(), 13, (1.0, 1.0))[0]
    row = (out[0, 0, 0] * 4).round().long().tolist()
    assert row == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4]


def test_ignore_only_where_it_was_or_padded():
    images, labels, conf = drawn_batch()
    out_labels = random_scale_crop(images, labels, conf, 48, (1.0, 1.5))[1]
    assert set(out_labels.unique().tolist()) <= set(labels.unique().tolist())


def distinct_partner(images, labels, conf):
    """A partner batch whose classes (100+) cannot be confused with the own classes."""
    partner_labels = torch.where(labels == IGNORE_INDEX, 100, labels + 100)
    return images.flip(-1) * 0.5, partner_labels, torch.full_like(conf, 0.5)


def test_classmix_keeps_exactly_half_of_each_images_classes():
    images, labels, conf = drawn_batch(b=8)
    for i in range(8):  # image i holds classes 0..i (1 to 8 classes, odd and even counts)
        labels[i] = torch.where(labels[i] == IGNORE_INDEX, IGNORE_INDEX, labels[i] % (i + 1))
        labels[i, :8, : 8 * (i + 1)] = torch.arange(i + 1).repeat_interleave(8)
    partner = distinct_partner(images, labels, conf)
    out_images, out_labels, out_conf = mix(images, labels, conf, "classmix",
                                           torch.Generator().manual_seed(0), partner)
    for i in range(8):
        present = set(labels[i].unique().tolist()) - {IGNORE_INDEX}
        kept = set(out_labels[i][out_labels[i] < 100].unique().tolist())
        assert len(kept) == len(present) // 2 and kept <= present
        for c in present:  # a class is kept whole or not at all
            assert torch.all((out_labels[i] == c) == ((labels[i] == c) & (c in kept)))
    keep = out_labels < 100
    assert torch.equal(out_images.permute(0, 2, 3, 1)[keep], images.permute(0, 2, 3, 1)[keep])
    assert torch.equal(out_images.permute(0, 2, 3, 1)[~keep],
                       partner[0].permute(0, 2, 3, 1)[~keep])
    assert torch.equal(out_conf[keep], conf[keep]) and torch.all(out_conf[~keep] == 0.5)


def test_classmix_default_partner_is_the_next_image():
    images, labels, conf = drawn_batch(b=3)
    _, out_labels, out_conf = mix(images, labels, conf, "classmix")
    keep = classmix_mask(labels, torch.Generator().manual_seed(5))
    assert keep.shape == labels.shape
    for i in range(3):
        taken = out_labels[i] != labels[i]
        nxt = (i + 1) % 3
        assert torch.equal(out_labels[i][taken], labels[nxt][taken])
        assert torch.equal(out_conf[i], torch.where(out_labels[i] == labels[i], conf[i], conf[nxt]))


def test_cutmix_pastes_a_half_area_rectangle_from_the_partner():
    images, labels, conf = drawn_batch(b=6)
    partner = distinct_partner(images, labels, conf)
    _, out_labels, _ = mix(images, labels, conf, "cutmix", torch.Generator().manual_seed(0),
                           partner)
    for i in range(6):
        pasted = (out_labels[i] >= 100) & (out_labels[i] != IGNORE_INDEX)
        rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert pasted.sum() == box  # a filled rectangle
        assert abs(int(box) - 72 * 96 // 2) <= 96


def test_cutout_zeroes_a_rectangle_and_ignores_it():
    images, labels, conf = drawn_batch(b=4)
    out_images, out_labels, out_conf = mix(images, labels, conf, "cutout",
                                           torch.Generator().manual_seed(0))
    cut = (out_images == 0).all(1)
    assert all(abs(int(cut[i].sum()) - 72 * 96 // 2) <= 96 for i in range(4))
    assert torch.all(out_labels[cut] == IGNORE_INDEX) and torch.all(out_conf[cut] == 0)
    assert torch.equal(out_labels[~cut], labels[~cut])
    assert torch.equal(out_images.permute(0, 2, 3, 1)[~cut], images.permute(0, 2, 3, 1)[~cut])


def test_mix_of_a_single_image_pastes_from_itself():
    images, labels, conf = drawn_batch(b=1)
    for mode in ("classmix", "cutmix"):
        out = mix(images, labels, conf, mode, torch.Generator().manual_seed(0))
        assert all(torch.equal(a, b) for a, b in zip(out, (images, labels, conf), strict=True))


def test_mix_none_is_the_identity_and_unknown_modes_fail():
    batch = drawn_batch()
    assert all(a is b for a, b in zip(mix(*batch, "none"), batch, strict=True))
    with pytest.raises(ValueError, match="classmix"):
        mix(*batch, "mixup")


def test_flip_moves_image_labels_and_confidence_together():
    images, labels, conf = drawn_batch(b=8)
    images = images + 0.05 * torch.rand(images.shape, generator=torch.Generator().manual_seed(0))
    out_images, out_labels, out_conf = random_scale_crop(
        images, labels, conf, 72, (1.0, 1.0), torch.Generator().manual_seed(3), hflip=True
    )
    flips = []
    for i in range(8):
        found = [
            flip
            for left in range(96 - 72 + 1)
            for flip in (False, True)
            if torch.equal(out_labels[i], labels[i, :, left:left + 72].flip(-1) if flip
                           else labels[i, :, left:left + 72])
            and torch.allclose(out_images[i], images[i, :, :, left:left + 72].flip(-1) if flip
                               else images[i, :, :, left:left + 72], atol=1e-5)
        ]
        assert len(set(found)) == 1  # one exact crop, flipped or not, for image and label
        flips.append(found[0])
        assert torch.equal(out_conf[i], encode(out_labels[i]))
    assert 0 < sum(flips) < 8


def test_photometric_keeps_each_class_one_colour():
    images, labels, _ = drawn_batch(b=8)
    out = photometric(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    inner = interior(labels, radius=4)
    for i in range(8):
        for c in labels[i][inner[i]].unique():
            pixels = out[i].permute(1, 2, 0)[inner[i] & (labels[i] == c)]
            assert torch.allclose(pixels, pixels[0].expand_as(pixels), atol=1e-3)


def test_photometric_rates_follow_the_method():
    n = 4000
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 12, 12, generator=g)
    labels = torch.arange(12).expand(n, 12, 12).contiguous()
    jittered = (color_jitter(images, g) - images).abs().amax((1, 2, 3)) > 1e-6
    blurred = (gaussian_blur(images, g) - images).abs().amax((1, 2, 3)) > 1e-6
    flipped = random_scale_crop(images, labels, labels.float(), 12, (1.0, 1.0), g,
                                hflip=True)[1][:, 0, 0] == 11
    assert jittered.float().mean() == pytest.approx(0.8, abs=0.03)
    assert blurred.float().mean() == pytest.approx(0.5, abs=0.03)
    assert flipped.float().mean() == pytest.approx(0.5, abs=0.03)


def test_jitter_keeps_gray_gray_when_only_hue_and_saturation_change():
    gray = torch.full((16, 3, 4, 4), 0.5)
    out = color_jitter(gray, torch.Generator().manual_seed(0))
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-5)  # still gray


def test_blur_preserves_constant_images_and_smooths_noise():
    flat = torch.linspace(0.1, 0.9, 8).view(8, 1, 1, 1).expand(8, 3, 16, 16).contiguous()
    torch.testing.assert_close(gaussian_blur(flat, torch.Generator().manual_seed(0)), flat)
    noise = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = gaussian_blur(noise, torch.Generator().manual_seed(2))
    changed = (out - noise).abs().amax((1, 2, 3)) > 1e-6
    assert (out[changed].std((1, 2, 3)) < noise[changed].std((1, 2, 3))).all()


def full_pipeline(batch, seed):
    g = torch.Generator().manual_seed(seed)
    out = random_scale_crop(*batch, 40, (0.5, 1.5), generator=g, hflip=True)
    images, labels, conf = mix(*out, "classmix", generator=g)
    return photometric(images, generator=g), labels, conf


def test_same_generator_gives_the_same_batch():
    batch = drawn_batch(b=6)
    first, second, other = (full_pipeline(batch, s) for s in (7, 7, 8))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])


def test_photometric_is_the_same_in_chunks_and_whole(monkeypatch):
    images = torch.rand(7, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    whole = photometric(images, torch.Generator().manual_seed(3))
    monkeypatch.setattr(unlabelled, "CPU_CHUNK_BYTES", 2 * images[0].numel() * 4)
    assert len(unlabelled._chunks(images)) == 4
    chunked = photometric(images, torch.Generator().manual_seed(3))
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    assert (whole - images).abs().amax((1, 2, 3)).gt(0).sum() >= 4  # the steps did run


def test_scale_crop_is_the_same_in_chunks_and_whole(monkeypatch):
    """Chunks of 3 source images over a batch of 8 (the last chunk holds 2): each chunk's
    rows index its own table."""
    batch = noisy_batch()
    whole = random_scale_crop(*batch, 40, (0.5, 1.5), torch.Generator().manual_seed(6), hflip=True)
    monkeypatch.setattr(unlabelled, "CPU_CHUNK_BYTES", 3 * batch[0][0].numel() * 4)
    assert [p.stop - p.start for p in unlabelled._chunks(batch[0])] == [3, 3, 2]
    chunked = random_scale_crop(*batch, 40, (0.5, 1.5), torch.Generator().manual_seed(6),
                                hflip=True)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(chunked[1:], whole[1:], strict=True))


def test_devices_without_embedding_bag_get_the_same_batch(monkeypatch):
    batch = drawn_batch(b=5)
    fused = full_pipeline(batch, 7)
    monkeypatch.setattr(unlabelled, "EMBEDDING_BAG_DEVICES", ())
    gathered = full_pipeline(batch, 7)
    torch.testing.assert_close(gathered[0], fused[0], rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(gathered[1:], fused[1:], strict=True))


def test_normalize_uses_imagenet_statistics_on_both_shapes():
    x = torch.rand(2, 3, 5, 5)
    expected = (x[0, 1] - 0.456) / 0.224
    torch.testing.assert_close(normalize(x)[0, 1], expected)
    torch.testing.assert_close(normalize(x[0])[1], expected)
    torch.testing.assert_close(denormalize(normalize(x)), x)


def test_labelled_transform_crops_and_keeps_alignment():
    torch.manual_seed(0)
    images, labels, _ = drawn_batch(b=1, h=36, w=60)
    transform = LabelledTransform(crop_size=48, scale_range=(0.75, 1.25))
    for _ in range(5):
        image, label = transform(images[0], labels[0])
        assert image.shape == (3, 48, 48) and label.shape == (48, 48)
        assert set(label.unique().tolist()) <= set(labels.unique().tolist()) | {IGNORE_INDEX}
        assert image.min() >= 0 and image.max() <= 1


def test_random_crop_pads_small_images():
    image = torch.rand(3, 20, 30)
    out = RandomCrop(24)(image)
    assert out.shape == (3, 24, 24)


class DeviceReads(TorchDispatchMode):
    """Records the operators that read a tensor's value back to the host (``item``, ``bool``,
    ``float``, ``int``, indexing with a tensor: all ``_local_scalar_dense``) and ``nonzero``,
    whose output size waits for the device."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def record_reads(monkeypatch, fn, *args, **kwargs) -> list[str]:
    """The host reads of fn(*args, **kwargs): ``DeviceReads`` and every ``tolist``."""
    mode = DeviceReads()
    original = torch.Tensor.tolist

    def tolist(self):
        mode.reads.append("tolist")
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    with mode:
        fn(*args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "tolist", original)
    return mode.reads


def test_scale_crop_and_mix_never_read_the_device(monkeypatch):
    batch = drawn_batch(b=6)
    g = torch.Generator().manual_seed(0)
    assert record_reads(monkeypatch, random_scale_crop, *batch, 40, (0.5, 1.5), g,
                        hflip=True) == []
    for mode in ("classmix", "cutmix", "cutout"):
        assert record_reads(monkeypatch, mix, *batch, mode, g) == [], mode
    # the recorder sees reads: the old geometry's one .tolist(), an item()
    assert record_reads(monkeypatch, lambda: (torch.ones(2).tolist(), torch.ones(1).item())) == [
        "tolist", str(torch.ops.aten._local_scalar_dense.default)]


def test_photometric_reads_nothing_but_the_nonzero_of_its_subsets(monkeypatch):
    """The hue and blur run on the images drawn for them, found with ``nonzero`` (a device
    sync off the CPU; on the CPU computing every image instead costs more): that is all off
    the CPU. On the CPU each chunk's order of colour steps is read once as well, to skip the
    identity work, which changes nothing but rounding."""
    images = torch.rand(8, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    nonzero = str(torch.ops.aten.nonzero.default)
    monkeypatch.setattr(unlabelled, "CPU_CHUNK_BYTES", images[0].numel() * 4)  # 1 per chunk
    planned = photometric(images, torch.Generator().manual_seed(1))
    reads = record_reads(monkeypatch, photometric, images, torch.Generator().manual_seed(1))
    assert reads.count("tolist") == 8
    monkeypatch.setattr(unlabelled, "PLANNED_DEVICES", ())
    reads = record_reads(monkeypatch, photometric, images, torch.Generator().manual_seed(1))
    assert reads and set(reads) == {nonzero}
    assert len(reads) <= (4 + 1) * 8  # one per jitter position and one for the blur, per chunk
    unplanned = photometric(images, torch.Generator().manual_seed(1))
    torch.testing.assert_close(planned, unplanned, rtol=0, atol=1e-5)
    assert (planned - images).abs().amax((1, 2, 3)).gt(0.01).sum() >= 6  # the steps ran


def three_steps(batch, mode, seed, partner=None):
    g = torch.Generator().manual_seed(seed)
    out = random_scale_crop(*batch, 40, (0.5, 1.5), generator=g, hflip=True)
    images, labels, conf = mix(*out, mode, generator=g, partner=partner(*out) if partner else None)
    return photometric(images, generator=g), labels, conf


def noisy_batch(b=8):
    images, labels, conf = drawn_batch(b=b, h=48, w=56)
    noise = 0.3 * torch.rand(images.shape, generator=torch.Generator().manual_seed(5))
    return (images * 0.7 + noise), labels, conf


@pytest.mark.parametrize("images_per_chunk", [1, 3, 8])
@pytest.mark.parametrize("mode", ["classmix", "cutmix", "cutout", "none"])
def test_strong_augment_is_the_three_steps_in_one_call(monkeypatch, mode, images_per_chunk):
    batch = noisy_batch()
    monkeypatch.setattr(unlabelled, "CPU_CHUNK_BYTES", images_per_chunk * 3 * 40 * 40 * 4)
    assert len(unlabelled._chunks(torch.empty(8, 3, 40, 40))) == -(-8 // images_per_chunk)
    kept = [x.clone() for x in batch]
    fused = strong_augment(*batch, 40, (0.5, 1.5), mode, torch.Generator().manual_seed(4))
    apart = three_steps(batch, mode, 4)
    assert all(torch.equal(a, b) for a, b in zip(fused, apart, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(batch, kept, strict=True))  # inputs untouched
    cropped = random_scale_crop(*batch, 40, (0.5, 1.5), torch.Generator().manual_seed(4),
                                hflip=True)
    assert torch.equal(fused[1], cropped[1]) == (mode == "none")  # the mix moved labels
    if mode == "cutout":
        assert fused[1].eq(IGNORE_INDEX).sum() > cropped[1].eq(IGNORE_INDEX).sum()


def test_strong_augment_takes_partners_from_another_batch():
    batch, others = noisy_batch(), noisy_batch()
    others = (others[0].flip(0), others[1].flip(0), others[2].flip(0))

    def partners(images, labels, conf):
        return tuple(random_scale_crop(*others, 40, (1.0, 1.0), torch.Generator().manual_seed(9)))

    fused = strong_augment(*batch, 40, (0.5, 1.5), "classmix", torch.Generator().manual_seed(2),
                           partners)
    apart = three_steps(batch, "classmix", 2, partners)
    assert all(torch.equal(a, b) for a, b in zip(fused, apart, strict=True))


class NewLargeTensors(TorchDispatchMode):
    """Counts the tensors of at least ``numel`` elements that operators allocate (outputs
    that alias no input: not views, not ``out=``)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fresh = [r.alias_info is None for r in func._schema.returns]
        for t, new in zip(out if isinstance(out, tuple) else (out,), fresh, strict=False):
            self.count += int(new and isinstance(t, torch.Tensor) and t.numel() >= self.numel)
        return out


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, -1, 2]])
def test_jitter_in_place_is_the_same_and_makes_no_image_sized_tensor(order):
    """Colour steps into out = the images' own storage give the batch they give into a new
    tensor, with no image-sized temporary; into another out they leave the images as they
    were."""
    images = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(4))
    order = torch.tensor([order])
    factors, hue = torch.tensor([[1.2, 0.8, 1.1]]), torch.tensor([0.2])
    steps = unlabelled._linear_steps(order, factors)
    expected = unlabelled._jitter(images, steps, order, hue)
    into, kept = torch.empty_like(images), images.clone()
    unlabelled._jitter(images, steps, order, hue, into)
    assert torch.equal(into, expected) and torch.equal(images, kept)
    counter = NewLargeTensors(images.numel())
    with counter:
        unlabelled._jitter(images, steps, order, hue, images)
    assert torch.equal(images, expected) and counter.count == 0


def test_strong_augment_makes_no_batch_sized_temporaries(monkeypatch):
    """One image per chunk: the crop's three outputs and the mixing mask are the only
    tensors the size of the batch's labels or larger; the three calls make nine."""
    batch = drawn_batch(b=8, h=44, w=44)
    monkeypatch.setattr(unlabelled, "CPU_CHUNK_BYTES", 3 * 40 * 40 * 4)
    counts = []
    for run in (lambda: strong_augment(*batch, 40, (0.9, 1.1), "classmix",
                                       torch.Generator().manual_seed(0)),
                lambda: three_steps(batch, "classmix", 0)):
        mode = NewLargeTensors(8 * 40 * 40)
        with mode:
            run()
        counts.append(mode.count)
    assert counts == [4, 9]
