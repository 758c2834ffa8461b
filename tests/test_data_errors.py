"""Every bad input gets a DataError that names the file; check-data reports all at once."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prcl.cli import main
from prcl.config import DataConfig
from prcl.data import DataProblems, build_datasets, load_pair, read_image, read_mask
from prcl.data.check import check_data, format_report
from prcl.data.cityscapes import label_id_lut
from prcl.data.samples import Sample, header_problems
from prcl.errors import DataError


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_voc(root: Path, train=("a", "b", "c"), val=("v",)) -> Path:
    for image_id in [*train, *val]:
        write_png(root / "JPEGImages" / f"{image_id}.jpg", np.full((16, 20, 3), 90, np.uint8))
        write_png(root / "SegmentationClassAug" / f"{image_id}.png", np.zeros((16, 20), np.uint8))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{v}\n" for v in val))
    return root


def voc_config(root: Path, num_labels=3, **kw) -> DataConfig:
    return DataConfig(dataset="voc", root=str(root), num_labels=num_labels, **kw)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="dataset root not found") as info:
        build_datasets(voc_config(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(info.value)


def test_empty_root_says_what_to_set():
    with pytest.raises(DataError, match=r"data\.root"):
        build_datasets(DataConfig(dataset="voc", root=""))


def test_missing_segmentation_class_aug_names_the_download(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "SegmentationClassAug").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"SegmentationClassAug.*SegmentationClassAug\.zip"):
        build_datasets(voc_config(tmp_path))


def test_missing_jpeg_images_and_nested_root_hint(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    with pytest.raises(DataProblems) as info:
        build_datasets(voc_config(tmp_path))
    message = str(info.value)
    assert "JPEGImages" in message and "VOCdevkit/VOC2012" in message
    assert len(info.value.problems) == 2  # JPEGImages and the masks, both reported


def test_missing_val_list(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(DataError, match=r"val\.txt"):
        build_datasets(voc_config(tmp_path))


def test_missing_image_and_mask_of_split_ids_are_all_listed(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / "a.jpg").unlink()
    (tmp_path / "SegmentationClassAug" / "v.png").unlink()
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("v\n")
    with pytest.raises(DataProblems) as info:
        build_datasets(voc_config(tmp_path, num_labels=2))
    text = "\n".join(info.value.problems)
    assert str(tmp_path / "JPEGImages" / "a.jpg") in text
    assert str(tmp_path / "SegmentationClassAug" / "v.png") in text


def test_size_mismatch(tmp_path):
    image = write_png(tmp_path / "x.jpg", np.zeros((16, 20, 3), np.uint8))
    mask = write_png(tmp_path / "x.png", np.zeros((16, 21), np.uint8))
    with pytest.raises(DataError, match=r"21x16.*20x16") as info:
        load_pair(Sample("x", image, mask), 21)
    assert str(mask) in str(info.value)


def test_mask_values_outside_the_classes(tmp_path):
    image = write_png(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.uint8))
    values = np.array([[0, 1, 21, 255]] * 4, np.uint8)
    mask = write_png(tmp_path / "x.png", values)
    with pytest.raises(DataError, match=r"values 21 .*0-20") as info:
        load_pair(Sample("x", image, mask), 21)
    assert str(mask) in str(info.value)
    assert load_pair(Sample("x", image, mask), 22)[1].max() == 255  # 21 fits 22 classes


def test_colour_masks_are_refused(tmp_path):
    mask = write_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"mode RGB.*palette PNG") as info:
        read_mask(mask)
    assert str(mask) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0garbage"])
def test_unreadable_image(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(DataError, match="cannot read image") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_truncated_image(tmp_path):
    path = write_png(tmp_path / "x.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                                          dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=str(path)):
        read_image(path)


def test_cityscapes_values_that_are_not_label_ids(tmp_path):
    image = write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    mask = write_png(tmp_path / "x_gtFine_labelIds.png", np.array([[7, 40], [0, 1]], np.uint8))
    sample = Sample("x", image, mask, lut=label_id_lut(), lut_name="labelIds")
    with pytest.raises(DataError, match="values 40 are not valid labelIds") as info:
        load_pair(sample, 19)
    assert str(mask) in str(info.value)


def test_cityscapes_instance_ids_where_label_ids_belong_are_named(tmp_path):
    image = write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    instance_ids = np.array([[26003, 26004], [7, 24001]], np.uint16)  # 16-bit, as shipped
    mask = tmp_path / "x_gtFine_labelIds.png"
    Image.fromarray(instance_ids).save(mask)
    sample = Sample("x", image, mask, lut=label_id_lut(), lut_name="labelIds")
    expected = r"instanceIds\.png standing where \*_labelIds\.png"
    with pytest.raises(DataError, match=expected) as info:
        load_pair(sample, 19)
    message = str(info.value)
    assert str(mask) in message and "26004" in message and "instance ids" in message


def test_folder_problems(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    write_png(tmp_path / "images" / "train" / "a.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "masks" / "train" / "orphan.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "classes.txt").write_text("background\ncat\ncat\n")
    with pytest.raises(DataProblems) as info:
        build_datasets(DataConfig(dataset="folder", root=str(tmp_path), num_labels=1))
    text = "\n".join(info.value.problems)
    assert "cat appear more than once" in text
    assert str(tmp_path / "masks" / "train" / "orphan.png") in text
    assert str(tmp_path / "images" / "val") in text


def test_check_data_reports_every_broken_link_of_a_folder_dataset(tmp_path, capsys):
    for split, names in (("train", "abcd"), ("val", "v")):
        for name in names:
            write_png(tmp_path / "images" / split / f"{name}.png", np.zeros((8, 8, 3), np.uint8))
            write_png(tmp_path / "masks" / split / f"{name}.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    links = {tmp_path / "images" / "train" / "b.png": tmp_path / "gone" / "b.png",
             tmp_path / "masks" / "train" / "c.png": tmp_path / "gone" / "c.png"}
    for link, target in links.items():
        link.unlink()
        link.symlink_to(target)
    assert main(["check-data", "data.dataset=folder", f"data.root={tmp_path}",
                 "data.num_labels=2"]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s):" in out
    for link, target in links.items():
        assert f"{link}: a link to {target}, which does not exist" in out


def test_folder_without_class_file(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=r"classes\.txt: class-names file not found"):
        build_datasets(DataConfig(dataset="folder", root=str(tmp_path)))


def broken_voc(root: Path) -> Path:
    """Four problems at once: bad values, size mismatch, unreadable image, missing mask."""
    make_voc(root, train=("a", "b", "c", "d", "e"), val=("v", "w"))
    write_png(root / "SegmentationClassAug" / "a.png", np.full((16, 20), 30, np.uint8))
    write_png(root / "SegmentationClassAug" / "v.png", np.zeros((10, 10), np.uint8))
    (root / "JPEGImages" / "e.jpg").write_bytes(b"oops")
    (root / "SegmentationClassAug" / "w.png").unlink()
    return root


def test_check_data_reports_every_problem_at_once(tmp_path):
    root = broken_voc(tmp_path)
    cfg = voc_config(root, num_labels=5, split_dir=None)
    report = check_data(cfg)
    assert not report.ok
    assert report.counts == {"labelled": 5, "unlabelled": 0, "val": 2}
    text = "\n".join(report.problems)
    for path in ("SegmentationClassAug/a.png", "SegmentationClassAug/v.png", "JPEGImages/e.jpg",
                 "SegmentationClassAug/w.png"):
        assert str(root / path) in text
    assert len(report.problems) == 4
    # Histogram over readable labelled masks: b, c, d are all background (16 x 20 each).
    assert report.histogram["labelled"][0] == 3 * 16 * 20
    assert "4 problem(s)" in format_report(report)


def test_check_data_command_exit_status(tmp_path, capsys):
    root = broken_voc(tmp_path / "bad")
    assert main(["check-data", "voc_662", f"data.root={root}", "data.num_labels=5"]) == 1
    assert "4 problem(s)" in capsys.readouterr().out
    good = make_voc(tmp_path / "good")
    assert main(["check-data", "voc_662", f"data.root={good}", "data.num_labels=2"]) == 0
    out = capsys.readouterr().out
    assert "no problems found" in out and "labelled 2, unlabelled 1, val 1" in out


def test_an_exif_turned_photo_is_read_as_shown_and_fits_its_mask(tmp_path):
    stored = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show": width and height swap
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif)
    mask = write_png(tmp_path / "photo.png", np.zeros((96, 64), np.uint8))
    sample = Sample("photo", path, mask)
    assert header_problems([sample]) == []
    image, label = load_pair(sample, 2)
    assert image.shape == (3, 96, 64) and label.shape == (96, 64)


def test_folder_masks_saved_as_jpeg_are_named(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        write_png(tmp_path / "images" / split / "a.png", np.zeros((4, 4, 3), np.uint8))
        write_png(tmp_path / "masks" / split / "a.png", np.zeros((4, 4), np.uint8))
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "train" / "b.jpg")
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(DataProblems, match=r"b\.jpg: masks must be PNG"):
        build_datasets(DataConfig(dataset="folder", root=str(tmp_path), num_labels=1))


def test_validation_masks_without_a_labelled_pixel_are_a_problem(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        write_png(tmp_path / "images" / split / "a.png", np.zeros((4, 4, 3), np.uint8))
        fill = 255 if split == "val" else 1
        write_png(tmp_path / "masks" / split / "a.png", np.full((4, 4), fill, np.uint8))
    (tmp_path / "classes.txt").write_text("background\ncat\n")
    report = check_data(DataConfig(dataset="folder", root=str(tmp_path), num_labels=1))
    assert any("the 1 val masks hold no labelled pixel" in p for p in report.problems)
