"""timm encoders under the PRCL heads: timm's smallest ResNet, ConvNeXt and MobileNetV3, randomly
initialised (nothing is downloaded)."""

import sys

import pytest
import timm
import torch
from test_train import TINY

from prcl.cli import main
from prcl.config import load_config
from prcl.engine import train
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.errors import CheckpointError, ConfigError, MissingExtraError
from prcl.models import TimmEncoder, build_encoder, build_model
from prcl.models.timm_encoder import low_level_index

SMALLEST = ["resnet10t", "convnext_atto", "mobilenetv3_small_050"]
LOW_CHANNELS = {"resnet10t": 64, "convnext_atto": 40, "mobilenetv3_small_050": 8}
HIGH_CHANNELS = {"resnet10t": 512, "convnext_atto": 320, "mobilenetv3_small_050": 288}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.mark.parametrize("name", SMALLEST)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_forward_shapes_at_stride_4(name, output_stride):
    model = build_model(f"timm:{name}", num_classes=5, output_stride=output_stride,
                        rep_dim=16, head_channels=16, aspp_channels=16).eval()
    assert isinstance(model.encoder, TimmEncoder)
    assert model.encoder.low_stride == 4
    assert model.encoder.low_channels == LOW_CHANNELS[name]
    assert model.encoder.high_channels == HIGH_CHANNELS[name]
    with torch.no_grad():
        low, high = model.encoder(torch.randn(2, 3, 64, 96))
        out = model(torch.randn(2, 3, 64, 96))
    assert low.shape == (2, LOW_CHANNELS[name], 16, 24)
    assert high.shape == (2, HIGH_CHANNELS[name], 64 // output_stride, 96 // output_stride)
    assert out.logits.shape == (2, 5, 16, 24)
    assert out.mu.shape == out.var.shape == (2, 16, 16, 24)
    assert out.feature.shape == (2, 48 + 16, 16, 24)


@pytest.mark.parametrize("name", SMALLEST)
def test_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = build_model(f"timm:{name}", num_classes=4, rep_dim=16, head_channels=16,
                        aspp_channels=16).train()
    with torch.no_grad():  # timm starts each residual branch's last norm at 0 (zero_init_last)
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    out = model(torch.randn(2, 3, 64, 64))
    (out.logits.square().mean() + out.mu.square().mean() + out.var.mean()).backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", SMALLEST)
def test_a_training_step_and_the_checkpoint_rebuild_the_encoder(cache, tmp_path, name):
    cfg = load_config("synthetic", [*TINY, f"model.encoder=timm:{name}", "model.aspp_channels=16",
                                    "train.epochs=1", "train.steps_per_epoch=1",
                                    f"data.root={cache}", f"train.out_dir={tmp_path}"])
    result = train(cfg, progress=False)
    assert result.steps == 1 and result.skipped_steps == 0
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["config"]["model"]["encoder"] == f"timm:{name}"
    for which in ("teacher", "student"):
        model, loaded = model_from_checkpoint(ckpt, which)
        assert isinstance(model.encoder, TimmEncoder) and loaded.model.encoder == f"timm:{name}"
        state = model.state_dict()
        assert state.keys() == ckpt[which].keys()
        assert all(torch.equal(state[k], v) for k, v in ckpt[which].items())
    assert not all(torch.equal(ckpt["student"][k], v) for k, v in ckpt["teacher"].items())


def test_resume_evaluate_and_predict_rebuild_a_timm_encoder(cache, tmp_path, capsys):
    from PIL import Image

    overrides = [*TINY, "model.encoder=timm:resnet10t", "model.aspp_channels=16",
                 "train.epochs=2", "train.steps_per_epoch=1", f"data.root={cache}"]
    train(load_config("synthetic", [*overrides, "train.epochs=1", f"train.out_dir={tmp_path}"]),
          progress=False)
    assert main(["train", "--resume", str(tmp_path / "last.pth"), "train.epochs=2",
                 "--no-progress"]) == 0
    assert load_checkpoint(tmp_path / "last.pth")["training"]["step"] == 2
    assert main(["evaluate", str(tmp_path / "last.pth")]) == 0
    Image.new("RGB", (40, 30), (20, 90, 160)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "last.pth"), str(tmp_path / "a.png"), "--out",
                 str(tmp_path / "pred")]) == 0
    assert "wrote 3 files for 1 images" in capsys.readouterr().out


@pytest.mark.parametrize(("name", "suffix"), [(n, ".safetensors") for n in SMALLEST]
                         + [("resnet10t", ".pth")])
def test_a_local_weights_file_loads_as_timm_loads_it(tmp_path, caplog, name, suffix):
    torch.manual_seed(0)
    source = timm.create_model(name)
    with torch.no_grad():
        for t in source.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        from safetensors.torch import save_file
        save_file(source.state_dict(), str(path))
    reference = timm.create_model(name, features_only=True, output_stride=16,
                                  pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    caplog.clear()
    encoder = build_encoder(f"timm:{name}", 16, weights=str(path)).eval()
    assert not caplog.records  # timm's notes on the dropped head: checked, so not repeated
    ours = encoder.body.state_dict()
    assert ours.keys() == reference.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    floats = [v for v in ours.values() if v.is_floating_point()]
    assert all(v.min() >= 0.5 and v.max() <= 1.5 for v in floats)  # the file's, none random


def test_weights_that_do_not_fit_name_the_file_and_keys(tmp_path):
    path = tmp_path / "convnext.pth"
    torch.save(timm.create_model("convnext_atto").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_encoder("timm:resnet10t", weights=str(path))
    message = str(err.value)
    assert str(path) in message and "missing keys (first: conv1.0.weight" in message
    assert "timm's format" in message
    with pytest.raises(CheckpointError, match=r"model\.pretrained=timm to download"):
        build_encoder("timm:resnet10t", weights="torchvision")


def test_an_output_stride_the_model_cannot_reach_names_its_strides():
    with pytest.raises(ConfigError) as err:
        build_encoder("timm:vit_tiny_patch16_224", output_stride=8)
    assert "feature strides: 16, 16, 16" in str(err.value)
    assert "Use model.output_stride=16" in str(err.value)
    with pytest.raises(ConfigError, match=r"stride 32 and it does not take timm's output_stride "
                                          r"\(its feature strides: 4, 8, 16, 32\)"):
        build_encoder("timm:swin_tiny_patch4_window7_224", output_stride=16)


def test_a_vit_runs_at_its_own_stride_on_any_input_size():
    model = build_model("timm:vit_tiny_patch16_224", num_classes=3, rep_dim=8, head_channels=8,
                        aspp_channels=8).eval()
    assert model.encoder.low_stride == 16
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 70)).logits.shape == (1, 3, 4, 5)


def test_low_level_stage_is_stride_4_or_the_nearest():
    assert low_level_index([2, 4, 8, 16, 16]) == 1
    assert low_level_index([4, 8, 16, 32]) == 0
    assert low_level_index([2, 8, 16]) == 1  # a tie in octaves: the coarser
    assert low_level_index([16, 16, 16]) == 1  # the deeper one, but not the last
    assert low_level_index([16]) == 0


def test_unknown_names_are_refused_with_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'timm:resnet10t'"):
        build_encoder("timm:resnet10")
    with pytest.raises(ConfigError, match=r"or timm:<name> for a timm model"):
        load_config("synthetic", ["model.encoder=timm:res net"])
    assert load_config("synthetic", ["model.encoder=timm:convnext_atto.d2_in1k"])


def test_without_timm_a_timm_encoder_is_one_line_saying_how_to_install(monkeypatch, capsys,
                                                                      cache, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'prcl\[timm\]'"):
        build_encoder("timm:resnet10t")
    out = tmp_path / "run"
    assert main(["train", "synthetic", *TINY, "model.encoder=timm:resnet10t",
                 f"data.root={cache}", f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err == ("prcl train: error: model.encoder 'timm:resnet10t' needs timm, which is not "
                   "installed: pip install 'prcl[timm]'\n")
    assert not out.exists()
