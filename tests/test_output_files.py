"""What the commands write: never through a link, never over their inputs, with the user's
umask; an image too large for PIL is skipped like any unreadable one."""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.cli import main
from prcl.config import load_config
from prcl.engine.checkpoint import atomic_save, make_checkpoint
from prcl.models import model_from_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random 3-class network (ResNet-18, narrow heads) as a prcl checkpoint."""
    cfg = load_config("synthetic", ["model.encoder=resnet18", "model.head_channels=16",
                                    "model.rep_dim=16", "model.aspp_channels=16",
                                    "train.device=cpu"])
    torch.manual_seed(0)
    model = model_from_config(cfg.model, 3, pretrained=False)
    path = tmp_path_factory.mktemp("checkpoint") / "best.pth"
    atomic_save(make_checkpoint(cfg, model, model, ["sky", "road", "car"]), path)
    return path


def picture(path, colour=(120, 30, 200), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def bomb_png(path, side=14000):
    """A PNG whose header says side x side pixels (past PIL's decompression-bomb limit) and
    that holds no pixels at all: PIL refuses it on opening."""

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_predict_replaces_a_link_at_an_output_name_and_leaves_its_target(checkpoint,
                                                                         tmp_path):
    picture(tmp_path / "in" / "a.png")
    precious = picture(tmp_path / "precious.png", (1, 2, 3))
    before = precious.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_mask.png").symlink_to(precious)
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(out)]) == 0
    assert precious.read_bytes() == before
    assert not (out / "a_mask.png").is_symlink()
    assert Image.open(out / "a_mask.png").mode == "P"


def test_predict_never_writes_over_an_input_image(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    picture(folder / "a.png")
    truth = picture(folder / "a_mask.png", (0, 0, 0))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["predict", str(checkpoint), str(folder), "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the prediction of {folder / 'a.png'} would replace the input image {truth}" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_predict_skips_an_image_past_the_pixel_limit_and_predicts_the_rest(checkpoint,
                                                                           tmp_path, capsys):
    folder = tmp_path / "images"
    picture(folder / "a.png")
    bomb = bomb_png(folder / "huge.png")
    picture(folder / "z.png")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "wrote 6 files for 2 images" in captured.out
    assert captured.err.count("\n") == 1
    assert f"{bomb}: the image has more than 178,956,970 pixels" in captured.err
    assert "PRCL_MAX_IMAGE_PIXELS" in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}_{k}.png" for s in "az" for k in ("mask", "overlay", "uncertainty"))


def test_the_pixel_limit_follows_prcl_max_image_pixels(tmp_path, monkeypatch):
    from prcl.data import read_image
    from prcl.errors import DataError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    path = picture(tmp_path / "a.png", size=(40, 30))
    monkeypatch.setenv("PRCL_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DataError, match=r"a\.png: the image has more than 1,000 pixels"):
        read_image(path)
    monkeypatch.setenv("PRCL_MAX_IMAGE_PIXELS", "2400")
    assert read_image(path).shape == (3, 30, 40)
    monkeypatch.setenv("PRCL_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match=r"PRCL_MAX_IMAGE_PIXELS='lots': give a number"):
        read_image(path)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_keep_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = atomic_save({"a": torch.zeros(2)}, tmp_path / "x.pth")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_evaluate_and_convert_refuse_to_write_over_their_input(checkpoint, capsys):
    before = checkpoint.read_bytes()
    assert main(["evaluate", str(checkpoint), "--json", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--json {checkpoint} is the input {checkpoint}" in err
    assert main(["convert-official", str(checkpoint), str(checkpoint)]) == 2
    assert f"output {checkpoint} is the input {checkpoint}" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_an_image_folder_with_a_huge_image_is_one_line_in_train_and_check_data(tmp_path,
                                                                             capsys):
    root = tmp_path / "data"
    (root / "classes.txt").parent.mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    for split, names in (("train", "abcd"), ("val", "v")):
        for name in names:
            picture(root / "images" / split / f"{name}.png", size=(32, 32))
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / split /
                                                               f"{name}.png")
    bomb = bomb_png(root / "images" / "train" / "c.png")
    overrides = ["data.dataset=folder", f"data.root={root}", "data.num_labels=4",
                 f"train.out_dir={tmp_path / 'run'}", "data.num_workers=0"]
    assert main(["check-data", *overrides]) == 1
    out = capsys.readouterr().out
    assert f"{bomb}: the image has more than 178,956,970 pixels" in out
    assert main(["train", *overrides, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{bomb}: the image has more than 178,956,970 pixels" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
