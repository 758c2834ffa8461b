"""The built-in synthetic dataset: design, determinism, the cache and its atomic writing."""

import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from prcl.config import DataConfig, SyntheticConfig
from prcl.data import IGNORE_INDEX, build_datasets, ensure_synthetic, synthetic
from prcl.data.synthetic import (
    BACKGROUND_TEXTURES,
    CLASS_NAMES,
    CLASSES,
    OBJECT_SIZE,
    _shape_mask,
    _smooth_noise,
    cache_name,
    render,
)

TINY = SyntheticConfig(num_train=6, num_val=3, image_size=64, seed=1)


def test_class_needs_shape_and_texture_together():
    shapes = Counter(shape for shape, _ in CLASSES)
    textures = Counter(texture for _, texture in CLASSES)
    assert len(set(CLASSES)) == len(CLASSES) >= 4
    assert min(shapes.values()) >= 2 and min(textures.values()) >= 2
    assert not set(textures) & set(BACKGROUND_TEXTURES)
    assert CLASS_NAMES[0] == "background" and len(CLASS_NAMES) == len(CLASSES) + 1


def test_render_sizes_and_ignore_band():
    for i in range(10):
        image, label = render(np.random.default_rng(i), 160)
        h, w = label.shape
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert 128 <= h <= 192 and 128 <= w <= 192
        assert set(np.unique(label)) <= set(range(len(CLASS_NAMES))) | {IGNORE_INDEX}
        # Two different classes never touch: an ignore band always runs between them.
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            touching = (a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not touching.any()


def test_object_sizes_span_the_whole_object_size_range():
    """Disc radii (from their areas) over OBJECT_SIZE's whole range: the largest of 300 is
    nearly OBJECT_SIZE[1] / OBJECT_SIZE[0] times the smallest (borders clip a few)."""
    yy, xx = np.mgrid[0:160, 0:160].astype(np.float32)
    radii = [np.sqrt(_shape_mask("disc", yy, xx, np.random.default_rng(i)).sum() / np.pi) / 160
             for i in range(300)]
    assert min(radii) < OBJECT_SIZE[0] * 1.1 and max(radii) > OBJECT_SIZE[1] * 0.9
    assert max(radii) / min(radii) > 0.8 * OBJECT_SIZE[1] / OBJECT_SIZE[0]


def test_background_noise_is_torchs_bilinear_and_the_same_at_any_thread_count():
    """The same images whatever torch's threads (torch's interpolate, used up to generator
    version 2, differed in the last bits between one and two threads on every size here)."""
    threads = torch.get_num_threads()
    try:
        for h, w in ((163, 171), (128, 192), (97, 13)):
            fields = []
            for n in (1, 2):
                torch.set_num_threads(n)
                fields.append(_smooth_noise(h, w, np.random.default_rng(h), cells=8))
            assert np.array_equal(fields[0], fields[1])
            coarse = torch.from_numpy(np.random.default_rng(h).random((1, 3, 8, 8),
                                                                      dtype=np.float32))
            reference = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear",
                                                        align_corners=True)
            assert np.abs(fields[0] - reference[0].permute(1, 2, 0).numpy()).max() < 1e-6
    finally:
        torch.set_num_threads(threads)


def test_object_colours_do_not_name_the_class():
    colours = {c: [] for c in range(1, len(CLASS_NAMES))}
    for i in range(40):
        image, label = render(np.random.default_rng(100 + i), 96)
        for c in np.unique(label):
            if 0 < c < IGNORE_INDEX:
                colours[c].append(image[label == c].mean(0) / 255)
    for c, means in colours.items():
        assert len(means) >= 3, CLASS_NAMES[c]
        assert np.std(means, axis=0).mean() > 0.08, CLASS_NAMES[c]


def test_generates_voc_layout_deterministically(tmp_path):
    first = ensure_synthetic(TINY, tmp_path / "one")
    second = ensure_synthetic(TINY, tmp_path / "two")
    assert first.name == second.name == cache_name(TINY)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len([f for f in files if f.parts[0] == "JPEGImages"]) == 9
    assert len([f for f in files if f.parts[0] == "SegmentationClassAug"]) == 9
    assert (first / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == [
        "val_00000", "val_00001", "val_00002"]
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    assert (first / "class_names.txt").read_text().split() == list(CLASS_NAMES)


def test_cache_is_reused_and_named_by_version_and_settings(tmp_path, monkeypatch):
    folder = ensure_synthetic(TINY, tmp_path)
    monkeypatch.setattr(synthetic, "_write", lambda *a: pytest.fail("generated twice"))
    assert ensure_synthetic(TINY, tmp_path) == folder
    names = {cache_name(SyntheticConfig(seed=s, num_train=n)) for s in (0, 1) for n in (8, 9)}
    assert len(names) == 4
    assert f"v{synthetic.GENERATOR_VERSION}" in folder.name


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_render(rng, size):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return render(rng, size)

    monkeypatch.setattr(synthetic, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(TINY, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PRCL_CACHE", str(tmp_path / "cache"))
    cfg = DataConfig(dataset="synthetic", root="", num_labels=2, split_seed=0, crop_size=32,
                     synthetic=TINY)
    bundle = build_datasets(cfg)
    assert bundle.root == tmp_path / "cache" / cache_name(TINY)
    assert bundle.num_classes == len(CLASS_NAMES) and bundle.class_names == list(CLASS_NAMES)
    assert (len(bundle.labelled), len(bundle.unlabelled), len(bundle.val)) == (2, 4, 3)
    image, label = bundle.labelled[0]
    assert image.shape == (3, 32, 32) and label.dtype == torch.int64
    assert bundle.val_ids == ["val_00000", "val_00001", "val_00002"]


def test_a_killed_builds_temporary_folder_is_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = tmp_path / f".{cache_name(TINY)}-{dead}-x1y2"
    (abandoned / "JPEGImages").mkdir(parents=True)
    live = tmp_path / f".{cache_name(TINY)}-{os.getpid()}-z3"  # a build still running
    live.mkdir()
    ensure_synthetic(TINY, tmp_path)
    assert not abandoned.exists() and live.exists()
