"""VOC, Cityscapes and folder datasets from tiny on-disk fixtures in each exact layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.config import DataConfig
from prcl.data import IGNORE_INDEX, VOC_CLASSES, build_datasets, palette
from prcl.data.cityscapes import CityscapesLayout, label_id_lut
from prcl.data.samples import LabelledDataset
from prcl.data.voc import VOCLayout

H, W = 24, 32


def label_pattern(values, seed=0):
    """[H, W] uint8 of 8x8 blocks drawn from values."""
    rng = np.random.default_rng(seed)
    blocks = rng.choice(np.array(values, dtype=np.uint8), size=(H // 8, W // 8))
    return np.kron(blocks, np.ones((8, 8), dtype=np.uint8))


def write_image(path: Path, seed=0, size=(H, W)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, mask: np.ndarray, palette_png=False):
    """A grayscale PNG of the values, or a palette PNG whose indices are the values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette_png:
        img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
        img.putpalette(palette(256).ravel().tolist())
    else:
        img = Image.fromarray(mask)
    img.save(path)


def make_voc(root: Path, train=("a", "b", "c", "d"), val=("v1", "v2"),
             folder="SegmentationClassAug", palette_png=False) -> dict[str, np.ndarray]:
    """A VOC2012 folder; returns the masks written, by id."""
    masks = {}
    for i, image_id in enumerate([*train, *val]):
        write_image(root / "JPEGImages" / f"{image_id}.jpg", seed=i)
        masks[image_id] = label_pattern([0, 1, 15, 20, IGNORE_INDEX], seed=i)
        write_mask(root / folder / f"{image_id}.png", masks[image_id], palette_png)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return masks


def voc_config(root, **kw) -> DataConfig:
    return DataConfig(dataset="voc", root=str(root), num_labels=2, split_seed=0, crop_size=16,
                      num_workers=0, **kw)


def test_voc_augmented_layout_loads(tmp_path):
    masks = make_voc(tmp_path)
    bundle = build_datasets(voc_config(tmp_path))
    assert bundle.num_classes == 21 and bundle.class_names == list(VOC_CLASSES)
    assert len(bundle.labelled) == 2 and len(bundle.unlabelled) == 2
    assert sorted(bundle.labelled_ids + bundle.unlabelled_ids) == ["a", "b", "c", "d"]
    assert bundle.val_ids == ["v1", "v2"]
    image, label = bundle.labelled[0]
    assert image.shape == (3, 16, 16) and label.shape == (16, 16) and label.dtype == torch.int64
    assert bundle.unlabelled[0].shape == (3, 16, 16)
    image, label = bundle.val[1]
    assert image.shape == (3, H, W) and image.dtype == torch.float32 and image.max() <= 1
    assert torch.equal(label, torch.from_numpy(masks["v2"]).long())


def test_voc_palette_masks_give_class_indices(tmp_path):
    masks = make_voc(tmp_path, folder="SegmentationClass", palette_png=True)
    assert Image.open(tmp_path / "SegmentationClass" / "v1.png").mode == "P"
    bundle = build_datasets(voc_config(tmp_path))
    assert torch.equal(bundle.val[0][1], torch.from_numpy(masks["v1"]).long())


def test_voc_train_aug_list_is_used_when_present(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("a\nb\nc\n")
    bundle = build_datasets(voc_config(tmp_path))
    assert sorted(bundle.labelled_ids + bundle.unlabelled_ids) == ["a", "b", "c"]


REAL_VOC = {"2007_000042": ((335, 500), {0, 19, 255}),  # a train
            "2007_000063": ((375, 500), {0, 9, 12, 255})}  # a chair and a dog


def test_real_voc_images_load(shared_dir):
    root = shared_dir / "realdata" / "VOC2012"
    if not root.is_dir():
        pytest.skip("no real VOC sample")
    layout = VOCLayout(root)
    assert layout.mask_dir.name == "SegmentationClass"
    dataset = LabelledDataset([layout.sample(i, "val") for i in REAL_VOC], num_classes=21)
    for (image, label), (size, classes) in zip(dataset, REAL_VOC.values(), strict=True):
        assert image.shape == (3, *size) and label.shape == size
        assert set(label.unique().tolist()) == classes  # indices, not palette colours
        assert 0.2 < image.mean() < 0.8


# --- Cityscapes ---------------------------------------------------------------------------

CITY_LABEL_IDS = [0, 7, 8, 26, 33, 5]
LINDAU = ["lindau_000000_000004_leftImg8bit", "lindau_000000_000005_leftImg8bit"]
CITY_TRAIN_IDS = [255, 0, 1, 13, 18, 255]


def make_cityscapes(root: Path, authors_layout=False, train_ids_files=False):
    """Two training cities and one validation city, labels as labelIds (or labelTrainIds)."""
    items = {"train": [("aachen", 0), ("aachen", 1), ("bremen", 2), ("bremen", 3)],
             "val": [("lindau", 4), ("lindau", 5)]}
    label_root = root if authors_layout else root / "gtFine"
    for split, entries in items.items():
        for city, n in entries:
            stem = f"{city}_000000_{n:06d}"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=n)
            label_ids = label_pattern(CITY_LABEL_IDS, seed=n)
            write_mask(label_root / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
            if train_ids_files:
                train = label_id_lut()[label_ids].astype(np.uint8)
                train[train == 13] = 14  # distinguishable from the mapped labelIds
                write_mask(label_root / split / city / f"{stem}_gtFine_labelTrainIds.png", train)


def city_config(root, **kw) -> DataConfig:
    return DataConfig(dataset="cityscapes", root=str(root), num_labels=2, split_seed=1,
                      crop_size=16, **kw)


def expected_train_ids(n):
    lut = dict(zip(CITY_LABEL_IDS, CITY_TRAIN_IDS, strict=True))
    return torch.from_numpy(np.vectorize(lut.get)(label_pattern(CITY_LABEL_IDS, seed=n))).long()


@pytest.mark.parametrize("authors_layout", [False, True])
def test_cityscapes_label_ids_map_to_train_ids(tmp_path, authors_layout):
    make_cityscapes(tmp_path, authors_layout=authors_layout)
    bundle = build_datasets(city_config(tmp_path))
    assert bundle.num_classes == 19 and bundle.class_names[13] == "car"
    assert bundle.val_ids == LINDAU
    assert len(bundle.labelled) + len(bundle.unlabelled) == 4
    assert torch.equal(bundle.val[0][1], expected_train_ids(4))


def test_cityscapes_label_train_ids_are_preferred(tmp_path):
    make_cityscapes(tmp_path, train_ids_files=True)
    label = build_datasets(city_config(tmp_path)).val[0][1]
    expected = expected_train_ids(4)
    expected[expected == 13] = 14
    assert torch.equal(label, expected)


def test_cityscapes_full_label_map():
    lut = label_id_lut()
    assert [int(lut[i]) for i in (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                                  28, 31, 32, 33)] == list(range(19))
    assert all(lut[i] == IGNORE_INDEX for i in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18,
                                                  29, 30))
    assert lut[34] == -1 and lut[255] == -1


def test_cityscapes_test_city_validation_list_falls_back_to_val(tmp_path):
    make_cityscapes(tmp_path)
    split = tmp_path / "splits" / "2" / "1"
    split.mkdir(parents=True)
    (split / "labeled_filename.txt").write_text(
        "aachen_000000_000000_leftImg8bit\nbremen_000000_000002_leftImg8bit\n")
    (split / "unlabeled_filename.txt").write_text(
        "aachen_000000_000001_leftImg8bit\nbremen_000000_000003_leftImg8bit\n")
    (split / "valid_filename.txt").write_text("munich_000000_000019_leftImg8bit\n")
    with pytest.warns(UserWarning, match="test-city"):
        bundle = build_datasets(city_config(tmp_path, split_dir=str(tmp_path / "splits")))
    assert bundle.val_ids == LINDAU
    assert bundle.labelled_ids == ["aachen_000000_000000_leftImg8bit",
                                   "bremen_000000_000002_leftImg8bit"]


def test_official_cityscapes_validation_list_is_test_cities(shared_dir):
    from prcl.data import read_split
    from prcl.data.cityscapes import TEST_CITIES, city_of

    split = read_split(shared_dir / "official-splits" / "CityScapes_split", 150, 3407)
    assert {city_of(i) for i in split.val} <= TEST_CITIES
    assert not {city_of(i) for i in split.labelled + split.unlabelled} & TEST_CITIES


def test_cityscapes_layout_lists_both_splits(tmp_path):
    make_cityscapes(tmp_path)
    layout = CityscapesLayout(tmp_path)
    assert len(layout.train_ids()) == 4 and len(layout.labelled_candidates()) == 4
    sample = layout.sample("aachen_000000_000001_leftImg8bit", "train")
    assert sample.mask.name == "aachen_000000_000001_gtFine_labelIds.png"


# --- folder ---------------------------------------------------------------------------------


def make_folder(root: Path, classes=("background", "cat", "dog"), unlabelled=("u1", "u2")):
    (root).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for split, ids in (("train", ["t1", "t2", "t3"]), ("val", ["v1"])):
        for n, image_id in enumerate(ids):
            write_image(root / "images" / split / f"{image_id}.png", seed=n)
            write_mask(root / "masks" / split / f"{image_id}.png", label_pattern([0, 1, 2, 255], n))
    for n, image_id in enumerate(unlabelled):
        write_image(root / "images" / "train" / f"{image_id}.jpg", seed=10 + n)


def test_folder_dataset_reads_classes_and_masks(tmp_path):
    make_folder(tmp_path)
    cfg = DataConfig(dataset="folder", root=str(tmp_path), num_labels=3, crop_size=16)
    bundle = build_datasets(cfg)
    assert bundle.num_classes == 3 and bundle.class_names == ["background", "cat", "dog"]
    assert bundle.labelled_ids == ["t1", "t2", "t3"]  # only images with masks
    assert bundle.unlabelled_ids == ["u1", "u2"]
    assert torch.equal(bundle.val[0][1], torch.from_numpy(label_pattern([0, 1, 2, 255], 0)).long())
    assert bundle.unlabelled[1].shape == (3, 16, 16)


def test_folder_generated_split_never_labels_an_image_without_mask(tmp_path):
    make_folder(tmp_path)
    for seed in range(5):
        cfg = DataConfig(dataset="folder", root=str(tmp_path), num_labels=1, split_seed=seed)
        bundle = build_datasets(cfg)
        assert set(bundle.labelled_ids) <= {"t1", "t2", "t3"}
        assert len(bundle.unlabelled_ids) == 4
