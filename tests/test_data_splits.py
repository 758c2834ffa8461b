"""Split lists: the authors' layout, deterministic generation, validation, `prcl splits`."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prcl.cli import main
from prcl.config import DataConfig
from prcl.data import Split, build_datasets, generate_split, read_split, write_split
from prcl.data.splits import split_problems
from prcl.data.voc import VOCLayout
from prcl.errors import DataError

IDS = [f"img_{i:03d}" for i in range(100)]


def test_official_voc_split(shared_dir):
    split = read_split(shared_dir / "official-splits" / "VOC_split", 662, 3407)
    assert len(split.labelled) == 662 and len(split.unlabelled) == 9920
    assert len(split.val) == 1449 and split.val[0] == "2007_000033"
    assert not set(split.labelled) & set(split.unlabelled)
    assert len(set(split.labelled) | set(split.unlabelled)) == 10582


def test_official_cityscapes_split(shared_dir):
    split = read_split(shared_dir / "official-splits" / "CityScapes_split", 150, 3407)
    assert len(split.labelled) == 150 and len(split.unlabelled) == 2825
    assert len(set(split.labelled) | set(split.unlabelled)) == 2975
    assert all(i.endswith("_leftImg8bit") for i in split.labelled)


def test_generated_split_is_deterministic_and_disjoint():
    first = generate_split(IDS, IDS, 10, seed=3)
    again = generate_split(list(reversed(IDS)), IDS, 10, seed=3)
    other = generate_split(IDS, IDS, 10, seed=4)
    assert first.labelled == again.labelled and first.unlabelled == again.unlabelled
    assert first.labelled != other.labelled
    assert len(first.labelled) == 10 and len(first.unlabelled) == 90
    assert sorted(first.labelled + first.unlabelled) == IDS
    # Pinned: numpy's PCG64 gives the same lists on every machine.
    assert first.labelled == ["img_001", "img_022", "img_023", "img_034", "img_042", "img_045",
                              "img_072", "img_084", "img_087", "img_096"]


def test_generated_split_rejects_impossible_counts():
    for n in (0, 101):
        with pytest.raises(DataError, match="num_labels"):
            generate_split(IDS, IDS, n, seed=0)


def test_write_then_read_round_trip_and_refuse_silent_overwrite(tmp_path):
    split = generate_split(IDS, IDS, 5, seed=1)
    folder = write_split(split, tmp_path, 5, 1, val_ids=["v1", "v2"])
    assert folder == tmp_path / "5" / "1"
    back = read_split(tmp_path, 5, 1)
    assert (back.labelled, back.unlabelled, back.val) == (split.labelled, split.unlabelled,
                                                          ["v1", "v2"])
    write_split(split, tmp_path, 5, 1, val_ids=["v1", "v2"])  # same lists: fine
    with pytest.raises(DataError, match="--overwrite"):
        write_split(generate_split(IDS, IDS, 5, seed=2), tmp_path, 5, 1)


def test_missing_split_folder_lists_what_exists(tmp_path):
    write_split(generate_split(IDS, IDS, 5, seed=1), tmp_path, 5, 1)
    with pytest.raises(DataError, match=r"662/3407.*found 5/1"):
        read_split(tmp_path, 662, 3407)
    (tmp_path / "5" / "1" / "unlabeled_filename.txt").unlink()
    with pytest.raises(DataError, match=r"unlabeled_filename\.txt"):
        read_split(tmp_path, 5, 1)


def make_tiny_voc(root: Path, ids) -> VOCLayout:
    for image_id in ids:
        for folder, array, suffix in (("JPEGImages", np.zeros((8, 8, 3), np.uint8), "jpg"),
                                      ("SegmentationClassAug", np.zeros((8, 8), np.uint8), "png")):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(root / folder / f"{image_id}.{suffix}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("v\n")
    return VOCLayout(root)


def test_split_problems_are_all_named(tmp_path):
    layout = make_tiny_voc(tmp_path, ["a", "b", "c", "v"])
    (tmp_path / "SegmentationClassAug" / "b.png").unlink()
    split = Split(labelled=["a", "a", "b"], unlabelled=["a", "c", "gone"], source="lists")
    text = "\n".join(split_problems(split, 3, layout.sample))
    assert "labeled_filename.txt lists 'a' more than once" in text
    assert "1 id(s) are both labelled and unlabelled (a)" in text
    assert "2 labelled ids but data.num_labels=3" in text
    assert str(tmp_path / "SegmentationClassAug" / "b.png") in text
    assert str(tmp_path / "JPEGImages" / "gone.jpg") in text


def test_splits_command_writes_the_authors_layout_that_training_reads(tmp_path, capsys):
    root = tmp_path / "voc"
    make_tiny_voc(root, ["a", "b", "c", "d", "e", "v"])
    out = tmp_path / "splits"
    assert main(["splits", "voc_662", f"data.root={root}", "--out", str(out),
                 "--num-labels", "2", "3", "--seeds", "0", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    for n in (2, 3):
        for seed in (0, 1):
            split = read_split(out, n, seed)
            assert len(split.labelled) == n and split.val == ["v"]
            assert sorted(split.labelled + split.unlabelled) == ["a", "b", "c", "d", "e"]
    cfg = DataConfig(dataset="voc", root=str(root), split_dir=str(out), num_labels=3,
                     split_seed=1, crop_size=8)
    bundle = build_datasets(cfg)
    assert bundle.labelled_ids == read_split(out, 3, 1).labelled
    assert bundle.val_ids == ["v"]


@pytest.mark.parametrize("name", ["two\nlines", " spaced", "tab\t"])
def test_splits_refuses_ids_a_list_cannot_hold(tmp_path, capsys, name):
    root = tmp_path / "voc"
    make_tiny_voc(root, ["a", "b", name, "v"])
    out = tmp_path / "splits"
    assert main(["splits", "voc_662", f"data.root={root}", "--out", str(out),
                 "--num-labels", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"image id {name!r}" in err
    assert "one id per line" in err and not out.exists()
