"""What the commands write: never through a link, never over their inputs, with the user's
umask; an image too large for PIL is skipped like any unreadable one."""

import os

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
