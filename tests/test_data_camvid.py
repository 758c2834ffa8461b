"""CamVid in the SegNet tutorial's layout (a tiny fake copy), and ``data.image_scale``."""

from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_layouts import label_pattern, write_image, write_mask

from prcl.cli import main
from prcl.config import DataConfig, load_config
from prcl.data import IGNORE_INDEX, DataProblems, build_datasets, build_val_dataset
from prcl.data.transforms import rescale_image, rescale_mask, scaled_size
from prcl.errors import ConfigError

H, W = 24, 32
NAMES = ["sky", "building", "pole", "road", "sidewalk", "tree", "sign", "fence", "car",
         "pedestrian", "bicyclist"]
SPLITS = {"train": ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000", "Seq05VD_f00030"],
          "val": ["0016E5_07959", "0016E5_07961"], "test": ["0001TP_008550"]}


def make_camvid(root: Path) -> dict[str, np.ndarray]:
    """The SegNet tutorial's CamVid folder: <split>/ PNG images, <split>annot/ label PNGs with
    classes 0-10 and 11 = void; returns the labels written, by name."""
    labels = {}
    for split, names in SPLITS.items():
        for n, name in enumerate(names):
            write_image(root / split / f"{name}.png", seed=n)
            labels[name] = label_pattern([0, 3, 8, 10, 11], seed=n + 10 * len(labels))
            write_mask(root / f"{split}annot" / f"{name}.png", labels[name])
    return labels


def camvid_config(root: Path, **kw) -> DataConfig:
    settings = {"crop_size": 16, **kw}
    return DataConfig(dataset="camvid", root=str(root), class_names=NAMES, num_labels=2,
                      split_seed=0, num_workers=0, **settings)


def as_classes(label: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(label == 11, IGNORE_INDEX, label)).long()


def test_camvid_layout_loads_with_void_as_ignore(tmp_path):
    labels = make_camvid(tmp_path)
    bundle = build_datasets(camvid_config(tmp_path))
    assert bundle.num_classes == 11 and bundle.class_names == NAMES
    assert sorted(bundle.labelled_ids + bundle.unlabelled_ids) == sorted(SPLITS["train"])
    assert len(bundle.labelled) == 2 and bundle.val_ids == SPLITS["val"]
    image, label = bundle.val[0]
    assert image.shape == (3, H, W)
    assert torch.equal(label, as_classes(labels[SPLITS["val"][0]]))
    assert set(label.unique().tolist()) <= {0, 3, 8, 10, IGNORE_INDEX}
    assert (label == IGNORE_INDEX).any()  # the void pixels
    image, label = bundle.labelled[0]
    assert image.shape == (3, 16, 16) and label.shape == (16, 16)


def test_camvid_reports_an_image_link_whose_target_is_gone(tmp_path):
    make_camvid(tmp_path)
    link = tmp_path / "train" / f"{SPLITS['train'][0]}.png"
    link.unlink()
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataProblems) as info:
        build_datasets(camvid_config(tmp_path))
    assert info.value.problems == [f"{link}: a link to {tmp_path / 'gone.png'}, which does not "
                                   "exist; restore its target or remove the link"]


def test_camvid_test_split_is_scored_with_val_split_test(tmp_path):
    labels = make_camvid(tmp_path)
    val, names = build_val_dataset(camvid_config(tmp_path, val_split="test"))
    assert names == NAMES and val.ids == SPLITS["test"]
    assert torch.equal(val[0][1], as_classes(labels[SPLITS["test"][0]]))


def test_camvid_problems_name_the_folder_and_the_class_names(tmp_path):
    make_camvid(tmp_path)
    for folder in ("valannot", "val"):
        for path in (tmp_path / folder).iterdir():
            path.unlink()
        (tmp_path / folder).rmdir()
    with pytest.raises(DataProblems) as info:
        build_datasets(camvid_config(tmp_path))
    assert f"{tmp_path / 'val'}: folder not found" in str(info.value)
    assert f"{tmp_path / 'valannot'}: folder not found" in str(info.value)
    with pytest.raises(DataProblems, match=r"data\.class_names is empty"):
        build_datasets(DataConfig(dataset="camvid", root=str(tmp_path), val_split="test",
                                  num_labels=2))


def test_camvid_label_values_beyond_void_are_named(tmp_path):
    make_camvid(tmp_path)
    bad = np.full((H, W), 12, dtype=np.uint8)
    write_mask(tmp_path / "valannot" / f"{SPLITS['val'][0]}.png", bad)
    bundle = build_datasets(camvid_config(tmp_path))
    with pytest.raises(Exception, match=r"values 12 are not valid CamVid labels \(0-10, 11 void\)"):
        bundle.val[0]


def test_check_data_reads_camvid(tmp_path, capsys):
    make_camvid(tmp_path)
    code = main(["check-data", "camvid_46", f"data.root={tmp_path}", "data.num_labels=2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no problems found" in out and "sky" in out and "bicyclist" in out


def test_class_names_are_refused_for_datasets_that_name_their_own():
    with pytest.raises(ConfigError, match=r"'data\.class_names' is read for camvid only"):
        load_config("synthetic", ["data.class_names=[a, b]"])


def test_the_camvid_configs_load_with_the_lite0_weights_and_eleven_names():
    for name, labels in (("camvid_46", 46), ("camvid_23", 23)):
        cfg = load_config(name)
        assert cfg.data.dataset == "camvid" and cfg.data.num_labels == labels
        assert cfg.data.class_names == NAMES
        assert cfg.model.encoder == "timm:tf_efficientnet_lite0"
        assert cfg.model.pretrained == "package"


# --- data.image_scale -----------------------------------------------------------------------

def test_scaled_size_rounds_and_keeps_a_pixel():
    assert scaled_size(360, 480, 0.5) == (180, 240)
    assert scaled_size(25, 33, 0.5) == (12, 16)  # round half to even, as Python rounds
    assert scaled_size(3, 3, 0.1) == (1, 1)


def test_rescaled_masks_keep_their_values_and_images_are_antialiased():
    mask = torch.from_numpy(label_pattern([0, 3, 8, 255], seed=3)).long()
    small = rescale_mask(mask, 0.5)
    assert small.shape == (12, 16) and small.dtype == torch.int64
    assert torch.equal(small, mask[1::2, 1::2])  # nearest: the pixel centres of 8x8 blocks
    stripes = torch.zeros(3, 8, 16)
    stripes[:, :, 0::4] = stripes[:, :, 1::4] = 1.0  # two white columns, two black
    # plain bilinear would sample 1, 0, 1, 0; the antialiasing triangle spans 4 columns
    inner = rescale_image(stripes, 0.5)[:, :, 1:-1]
    assert torch.allclose(inner, torch.tensor([0.25, 0.75] * 3).expand(3, 4, 6))
    assert rescale_image(stripes, 1.0) is stripes and rescale_mask(mask, 1.0) is mask


def test_image_scale_resizes_training_and_evaluation_alike(tmp_path):
    labels = make_camvid(tmp_path)
    bundle = build_datasets(camvid_config(tmp_path, image_scale=0.5, crop_size=32))
    image, label = bundle.val[0]
    assert image.shape == (3, H // 2, W // 2) and label.shape == (H // 2, W // 2)
    assert torch.equal(label, as_classes(labels[SPLITS["val"][0]])[1::2, 1::2])
    val, _ = build_val_dataset(camvid_config(tmp_path, image_scale=0.5))
    assert torch.equal(val[0][1], label)
    # training crops: a 12x16 image padded to the 32x32 crop, the padding ignored
    image, label = bundle.labelled[0]
    assert image.shape == (3, 32, 32)
    assert (label == IGNORE_INDEX).float().mean() > 0.5
    assert bundle.unlabelled[0].shape == (3, 32, 32)
