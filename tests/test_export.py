"""`prcl export` (ONNX through onnxruntime, TorchScript) and `prcl predict` from an ONNX file:
outputs equal to PyTorch's at input sizes other than the one exported with."""

import json
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from prcl.cli import main
from prcl.config import load_config
from prcl.data import normalize
from prcl.engine.checkpoint import atomic_save, make_checkpoint, model_from_checkpoint
from prcl.engine.checkpoint import load_checkpoint as read_checkpoint
from prcl.evaluation import Segmenter
from prcl.export import TRACE_SHAPE, export_metadata, export_network
from prcl.models import model_from_config

CLASSES = ["background", "cat", "dog", "car", "tree"]
SIZES = [(2, 3, 65, 77), (1, 3, 128, 96)]
"""Both differ from the traced example's, in batch, height and width."""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random demo-sized checkpoint (ResNet-18, narrow heads) and its ONNX export."""
    folder = tmp_path_factory.mktemp("export")
    cfg = load_config("synthetic", ["model.head_channels=16", "model.rep_dim=16",
                                    "model.aspp_channels=32"])
    torch.manual_seed(0)
    model = model_from_config(cfg.model, len(CLASSES), pretrained=False)
    with torch.no_grad():  # statistics far from 0/1, so that eval mode is not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    checkpoint = folder / "best.pth"
    atomic_save(make_checkpoint(cfg, model, model, CLASSES), checkpoint)
    assert main(["export", str(checkpoint), "--out", str(folder / "model.onnx")]) == 0
    return checkpoint, folder / "model.onnx"


def _pytorch(checkpoint, images, uncertainty=True):
    model, _ = model_from_checkpoint(read_checkpoint(checkpoint))
    with torch.no_grad():
        return Segmenter(model.eval(), uncertainty)(images)


def test_onnx_outputs_equal_pytorch_at_other_sizes(exported):
    checkpoint, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probs", "uncertainty"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for shape in SIZES:
        assert shape != TRACE_SHAPE
        images = torch.randn(shape, generator=torch.Generator().manual_seed(shape[2]))
        probs, uncertainty = session.run(None, {"images": images.numpy()})
        want_probs, want_uncertainty = _pytorch(checkpoint, images)
        b, _, h, w = shape
        assert probs.shape == (b, len(CLASSES), h, w) and uncertainty.shape == (b, 1, h, w)
        assert np.abs(probs - want_probs.numpy()).max() < 1e-4
        assert np.abs(uncertainty - want_uncertainty.numpy()).max() < 1e-4
        assert want_uncertainty.std() > 1e-3 and want_probs.max(1).values.min() < 0.9


def test_onnx_metadata_holds_class_names_and_normalisation(exported):
    _, path = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["format"] == "prcl-export-1" and meta["encoder"] == "resnet18"
    assert json.loads(meta["eval"])["mode"] == "whole"
    assert "uncertainty: [batch, 1, height, width]" in meta["outputs"]


def test_torchscript_outputs_equal_pytorch_at_other_sizes(exported, tmp_path, capsys):
    checkpoint, _ = exported
    for uncertainty in (True, False):
        path = tmp_path / f"model_{uncertainty}.pt"
        flag = [] if uncertainty else ["--no-uncertainty"]
        assert main(["export", str(checkpoint), "--out", str(path), "--format",
                     "torchscript", *flag]) == 0
        assert f"wrote {path} (torchscript, the teacher)" in capsys.readouterr().out
        extra = {"prcl.json": ""}
        with warnings.catch_warnings():  # PyTorch's: TorchScript is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.load(str(path), _extra_files=extra)
        meta = json.loads(extra["prcl.json"])
        assert json.loads(meta["class_names"]) == CLASSES
        assert ("uncertainty" in meta["outputs"]) == uncertainty
        for shape in SIZES:
            images = torch.randn(shape)
            with torch.no_grad():
                got = traced(images)
            want = _pytorch(checkpoint, images, uncertainty)
            assert len(got) == len(want) == (2 if uncertainty else 1)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and (g - w).abs().max() < 1e-4


def test_predict_from_onnx_writes_what_the_checkpoint_writes(exported, tmp_path, capsys):
    checkpoint, path = exported
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in (("a.png", (70, 50)), ("b.jpg", (40, 64))):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    for source, out in ((checkpoint, "from_pth"), (path, "from_onnx")):
        assert main(["predict", str(source), str(images), "--out", str(tmp_path / out)]) == 0
        assert "wrote 6 files for 2 images" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "from_pth").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "from_onnx").iterdir())
    assert len(names) == 6
    for name in names:
        ours = np.asarray(Image.open(tmp_path / "from_onnx" / name), dtype=np.int16)
        theirs = np.asarray(Image.open(tmp_path / "from_pth" / name), dtype=np.int16)
        if "uncertainty" in name:  # 8-bit colours of values within 1e-6 of each other
            assert np.abs(ours - theirs).max() <= 1
        else:
            assert np.array_equal(ours, theirs), name
    mask = np.asarray(Image.open(tmp_path / "from_onnx" / "a_mask.png"))
    assert len(np.unique(mask)) > 1


def test_predict_refuses_an_onnx_file_prcl_did_not_write(tmp_path, capsys):
    node = onnx.helper.make_node("Identity", ["images"], ["probs"])
    value = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    out = onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value], [out])), path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["predict", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path)]) == 2
    assert "other.onnx was not written by `prcl export`" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert main(["predict", str(tmp_path / "junk.onnx"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path)]) == 2
    assert "junk.onnx is not a readable ONNX file" in capsys.readouterr().err


@pytest.mark.parametrize(("module", "command"), [
    ("onnxscript", ["export", "{ckpt}", "--out", "{tmp}/m.onnx"]),
    ("onnxruntime", ["predict", "{onnx}", "{tmp}", "--out", "{tmp}/p"]),
])
def test_without_the_onnx_extra_one_line_says_how_to_install(exported, tmp_path, capsys,
                                                            monkeypatch, module, command):
    checkpoint, path = exported
    monkeypatch.setitem(sys.modules, module, None)
    args = [a.format(ckpt=checkpoint, onnx=path, tmp=tmp_path) for a in command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"needs {module}, which is not installed: pip install " \
        "'prcl[onnx]'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_the_segmenter_is_the_prediction_prcl_makes(exported):
    from prcl.evaluation import predict_whole

    checkpoint, _ = exported
    model, _ = model_from_checkpoint(read_checkpoint(checkpoint))
    images = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        out = model.eval()(normalize(images))
    pred = predict_whole(model, images, uncertainty=True)
    upsample = torch.nn.functional.interpolate
    probs = upsample(out.logits, size=(40, 56), mode="bilinear", align_corners=True).softmax(1)
    var = upsample(out.var.mean(1, keepdim=True), size=(40, 56), mode="bilinear",
                   align_corners=True)
    assert torch.allclose(pred.probs, probs, atol=1e-6)
    assert torch.allclose(pred.uncertainty, var, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet10t", "convnext_atto", "mobilenetv3_small_050"])
def test_timm_encoders_export_to_onnx(name, tmp_path):
    cfg = load_config("synthetic", [f"model.encoder=timm:{name}", "model.head_channels=16",
                                    "model.rep_dim=16", "model.aspp_channels=16"])
    model = model_from_config(cfg.model, 3, pretrained=False)
    path = tmp_path / "model.onnx"
    export_network(model, path, export_metadata(cfg, ["a", "b", "c"], True))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in SIZES:
        images = torch.randn(shape)
        with torch.no_grad():
            want = Segmenter(model.eval())(images)
        for got, w in zip(session.run(None, {"images": images.numpy()}), want, strict=True):
            assert np.abs(got - w.numpy()).max() < 1e-4


def test_an_export_that_differs_from_pytorch_is_not_written(exported, tmp_path, capsys,
                                                            monkeypatch):
    import prcl.export

    checkpoint, _ = exported
    monkeypatch.setattr(prcl.export, "TOLERANCE", -1.0)
    out = tmp_path / "model.pt"
    assert main(["export", str(checkpoint), "--out", str(out), "--format", "torchscript"]) == 2
    err = capsys.readouterr().err
    assert "the torchscript export differs from PyTorch by 0 at 1x3x80x112" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_refuses_to_write_over_its_checkpoint(exported, capsys):
    checkpoint, _ = exported
    before = checkpoint.read_bytes()
    assert main(["export", str(checkpoint), "--out", str(checkpoint), "--format",
                 "torchscript"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {checkpoint} is the input {checkpoint}" in err
    assert checkpoint.read_bytes() == before


def test_the_export_format_follows_the_files_extension(exported, tmp_path, capsys):
    checkpoint, _ = exported
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "m.pt")]) == 0
    assert f"wrote {tmp_path / 'm.pt'} (torchscript" in capsys.readouterr().out
    with warnings.catch_warnings():  # PyTorch's: TorchScript is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(tmp_path / "m.pt"))
    for out, flag, words in (("m.onnx", ["--format", "torchscript"],
                              "its extension means onnx, but --format is torchscript"),
                             ("m.bin", [], "name the file .onnx (ONNX) or .pt (TorchScript)")):
        assert main(["export", str(checkpoint), "--out", str(tmp_path / out), *flag]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err
        assert not (tmp_path / out).exists()


def _with_metadata(source, path, **changes):
    """A copy of the ONNX file ``source`` at ``path`` with metadata values replaced (None:
    removed)."""
    model = onnx.load(str(source))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(changes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {k: v for k, v in meta.items() if v is not None})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(("changes", "words"), [
    ({"eval": json.dumps({"mode": "sliding", "window": 64, "stride": 0})},
     "metadata: 'eval.stride' is 0; it must be at least 1"),
    ({"eval": json.dumps({"mode": "whole", "banana": 1})},
     "metadata: unknown key 'eval.banana'"),
    ({"std": "[0, 0, 0]"}, "metadata 'std' is [0, 0, 0]; it must be 3 numbers, above 0"),
    ({"mean": "[0.5]"}, "metadata 'mean' is [0.5]; it must be 3 numbers"),
    ({"class_names": json.dumps(CLASSES[:4])},
     "outputs 5 classes but its metadata names 4 (background, cat, dog, car)"),
    ({"class_names": None}, "its prcl metadata lacks class_names"),
    ({"image_scale": "0"}, "metadata: 'data.image_scale' is 0.0; it must be above 0"),
])
def test_predict_checks_an_onnx_files_metadata(exported, tmp_path, capsys, changes, words):
    _, source = exported
    path = _with_metadata(source, tmp_path / "model.onnx", **changes)
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    assert main(["predict", str(path), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}" in err and words in err
    assert not (tmp_path / "out").exists()


def test_predict_refuses_a_foreign_model_carrying_prcl_metadata(exported, tmp_path, capsys):
    _, source = exported
    node = onnx.helper.make_node("Identity", ["input"], ["probs"])
    value = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 5, 4, 4])
    out = onnx.helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, [1, 5, 4, 4])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [value], [out]))
    onnx.helper.set_model_props(foreign, {p.key: p.value
                                          for p in onnx.load(str(source)).metadata_props})
    path = tmp_path / "foreign.onnx"
    onnx.save(foreign, str(path))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main(["predict", str(path), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{path} has prcl metadata but not the inputs and outputs `prcl export` writes " \
        "(it takes input, gives probs)" in err


def test_predict_runs_at_the_scale_the_network_was_trained_at(exported, tmp_path, capsys):
    """A network trained with data.image_scale=0.5 predicts each image at half its size, and
    the mask comes back at the image's own size, from the checkpoint and from its export."""
    checkpoint, _ = exported
    ckpt = read_checkpoint(checkpoint)
    ckpt["config"]["data"]["image_scale"] = 0.5
    half = tmp_path / "half.pth"
    atomic_save(ckpt, half)
    assert main(["export", str(half), "--out", str(tmp_path / "half.onnx")]) == 0
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    small = torch.nn.functional.interpolate(image[None], size=(24, 40), mode="bilinear",
                                            antialias=True).clamp(0, 1)
    probs, _ = _pytorch(half, normalize(small))
    want = torch.nn.functional.interpolate(probs, size=(48, 80), mode="bilinear").argmax(1)[0]
    for source, out in ((half, "pth"), (tmp_path / "half.onnx", "onnx")):
        assert main(["predict", str(source), str(tmp_path / "a.png"), "--out",
                     str(tmp_path / out)]) == 0
        mask = np.asarray(Image.open(tmp_path / out / "a_mask.png"))
        assert mask.shape == (48, 80)
        assert (mask == want.numpy()).mean() > 0.99, out
    capsys.readouterr()
