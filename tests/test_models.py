import os
import re
from pathlib import Path

import pytest
import torch
import torchvision
from official_reference import TheirDeepLab, TheirUncertaintyHead, randomise_

from prcl.cli import main
from prcl.engine.checkpoint import load_checkpoint, model_from_checkpoint
from prcl.errors import CheckpointError
from prcl.models import (
    ENCODERS,
    build_encoder,
    build_model,
    convert_official_state_dict,
    load_official,
)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_shapes_and_strides(encoder, output_stride):
    model = build_model(encoder, num_classes=5, output_stride=output_stride).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        low, high = model.encoder(images)
        out = model(images)
    assert low.shape[-2:] == (16, 24)
    assert high.shape[-2:] == (64 // output_stride, 96 // output_stride)
    assert high.shape[1] == model.encoder.high_channels
    assert out.logits.shape == (2, 5, 16, 24)
    assert out.mu.shape == out.var.shape == (2, 256, 16, 24)
    assert out.feature.shape == (2, 304, 16, 24)


@pytest.mark.parametrize("name", ["resnet50", "resnet101"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_matches_torchvision(name, output_stride):
    dilate = [False, output_stride == 8, True]
    reference = getattr(torchvision.models, name)(replace_stride_with_dilation=dilate)
    ours = build_encoder(name, output_stride)
    theirs = {n: m for n, m in reference.named_modules() if isinstance(m, torch.nn.Conv2d)}
    for n, m in ours.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            ref = theirs[n]
            assert (m.stride, m.dilation, m.padding) == (ref.stride, ref.dilation, ref.padding), n


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_mobilenet_dilation_matches_torchvision(name):
    reference = getattr(torchvision.models, name)(dilated=True).eval()
    ours = build_encoder(name, 16).eval()
    theirs = {n: m for n, m in reference.named_modules() if isinstance(m, torch.nn.Conv2d)}
    convs = [(n, m) for n, m in ours.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(theirs)
    for n, m in convs:
        ref = theirs[n]
        assert (m.stride, m.dilation, m.padding) == (ref.stride, ref.dilation, ref.padding), n
    assert any(m.dilation == (2, 2) for _, m in convs)
    ours.load_state_dict({k: v for k, v in reference.state_dict().items()
                          if not k.startswith("classifier.")})
    images = torch.randn(1, 3, 80, 96)
    with torch.no_grad():
        assert torch.equal(ours(images)[1], reference.features(images))


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v3_small"])
def test_mobilenet_output_stride_8_dilates_the_last_two_stages(name):
    encoder = build_encoder(name, 8)
    dilations = {m.dilation[0] for m in encoder.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.groups > 1}
    strided = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)
               and m.stride == (2, 2)]
    assert dilations == {1, 2, 4}
    assert len(strided) == 3  # stem, and the stride-4 and stride-8 stages


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_forward_backward_reaches_every_parameter(encoder):
    torch.manual_seed(0)
    model = build_model(encoder, num_classes=4, rep_dim=32, head_channels=32).train()
    out = model(torch.randn(2, 3, 64, 64))
    (out.logits.square().mean() + out.mu.square().mean() + out.var.mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_without_representation_skips_mu_and_var():
    model = build_model("resnet18", num_classes=3).eval()
    out = model(torch.randn(1, 3, 32, 32), representation=False)
    assert out.mu is None and out.var is None
    assert out.logits.shape == (1, 3, 8, 8)


def test_variance_strictly_between_zero_and_one():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3)
    for mode in (model.train, model.eval):
        mode()
        with torch.no_grad():
            var = model(torch.randn(2, 3, 64, 64) * 3).var
        assert var.min() > 0 and var.max() < 1
        assert var.std() > 0.01
    with torch.no_grad():
        model.probability_head.beta.fill_(-40.0)
        floor = model(torch.randn(2, 3, 32, 32)).var
    assert torch.allclose(floor, torch.full_like(floor, 1e-6), rtol=1e-3)


def test_parameter_groups_split_the_probability_head():
    model = build_model("resnet18", num_classes=4)
    groups = model.parameter_groups()
    head = {id(p) for p in groups["probability_head"]}
    network = {id(p) for p in groups["network"]}
    assert not head & network
    assert head | network == {id(p) for p in model.parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in head}
    assert names == {
        "probability_head.fc1", "probability_head.fc2", "probability_head.gamma",
        "probability_head.beta", "probability_head.bn1.weight", "probability_head.bn1.bias",
    }


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_torchvision_state_dict_from_file(tmp_path, suffix):
    reference = torchvision.models.resnet18()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file(reference.state_dict(), str(path))
    encoder = build_encoder("resnet18", weights=str(path))
    ours = encoder.state_dict()
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key


def test_loads_torchvision_mobilenet_state_dict_from_file(tmp_path):
    reference = torchvision.models.mobilenet_v3_small().eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("mobilenet_v3_small", output_stride=8, weights=str(path)).eval()
    ours = encoder.state_dict()
    assert len(ours) == len([k for k in reference.state_dict() if k.startswith("features.")])
    for key, value in ours.items():
        assert torch.equal(value, reference.state_dict()[key]), key
    with pytest.raises(CheckpointError, match="missing"):
        build_encoder("mobilenet_v3_large", weights=str(path))


def test_wrong_weights_file_names_file_and_keys(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        build_encoder("resnet34", weights=str(path))
    message = str(err.value)
    assert str(path) in message and "missing" in message and "layer1.2" in message
    with pytest.raises(CheckpointError, match="shapes that do not fit"):
        build_encoder("resnet50", weights=str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_encoder("resnet18", weights=str(tmp_path / "nope.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pth is not a readable"):
        build_encoder("resnet18", weights=str(tmp_path / "junk.pth"))
    (tmp_path / "junk.safetensors").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors is not a readable safetensors"):
        build_encoder("resnet18", weights=str(tmp_path / "junk.safetensors"))


def _official_checkpoint(seed=0):
    g = torch.Generator().manual_seed(seed)
    net, head = TheirDeepLab(21), TheirUncertaintyHead()
    randomise_(net, g)
    randomise_(head, g)
    net.eval()
    head.eval()
    return net, head, {"epoch": 3, "model": net.state_dict(), "ema": net.state_dict(),
                       "uncer_head": head.state_dict()}


def test_load_official_matches_the_authors_network():
    net, head, checkpoint = _official_checkpoint()
    ours = load_official(checkpoint, num_classes=21, which="ema")
    images = torch.randn(2, 3, 65, 81, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, rep, feature = net(images)
        var = head(feature)
        out = ours(images)
    assert (out.logits - logits).abs().max() < 1e-4
    assert (out.mu - rep).abs().max() < 1e-4
    assert (out.var - var).abs().max() < 1e-4
    assert logits.abs().max() > 1  # the comparison is not between near-zero maps


def _read_key_list(path: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    sections: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        name, shape = line.split("\t")
        current[name] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return sections


def test_load_official_consumes_every_key_of_the_key_list(shared_dir):
    sections = _read_key_list(shared_dir / "official-checkpoint-keys.txt")
    network, head = sections["model / ema"], sections["uncer_head"]

    def tensors(spec):
        return {k: torch.randn(s) if s else torch.tensor(7) for k, s in spec.items()}

    checkpoint = {"model": tensors(network), "ema": tensors(network), "uncer_head": tensors(head),
                  "epoch": 1, "optimizer": {}, "optimizer_uncer": {}, "lr_scheduler": {},
                  "lr_scheduler_uncer": {}}
    converted = convert_official_state_dict(checkpoint, "model")
    assert len(converted) == len(network) + len(head)
    model = load_official(checkpoint, num_classes=21, which="model")
    assert set(model.state_dict()) == set(converted)
    assert torch.equal(model.state_dict()["probability_head.fc1"], checkpoint["uncer_head"]["fc1"])
    theirs = TheirDeepLab(21).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == network


def test_load_official_rejects_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint written by the authors"):
        load_official({"state_dict": {}})
    with pytest.raises(CheckpointError, match="does not exist"):
        load_official(tmp_path / "missing.pth")
    _, _, checkpoint = _official_checkpoint()
    with pytest.raises(CheckpointError, match="Check --num-classes"):
        load_official(checkpoint, num_classes=19)


def test_convert_official_command_round_trip(tmp_path, capsys):
    net, _, checkpoint = _official_checkpoint(seed=2)
    src, dst = tmp_path / "best_model.pth", tmp_path / "converted.pth"
    torch.save(checkpoint, src)
    assert main(["convert-official", str(src), str(dst)]) == 0
    assert "converted.pth" in capsys.readouterr().out
    model, cfg = model_from_checkpoint(load_checkpoint(dst))
    assert cfg.data.dataset == "voc" and cfg.model.encoder == "resnet101"
    images = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.allclose(model.eval()(images).logits, net(images)[0], atol=1e-4)
    assert main(["convert-official", str(tmp_path / "nope.pth"), str(dst)]) == 2
    assert "nope.pth does not exist" in capsys.readouterr().err


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PRCL_TEST_MARKER"]),))


@pytest.mark.parametrize("reader", ["checkpoint", "official", "weights"])
def test_a_crafted_file_runs_no_code_when_read(tmp_path, monkeypatch, reader):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("PRCL_TEST_MARKER", str(marker))
    crafted = tmp_path / "crafted.pth"
    torch.save({"format": "prcl-checkpoint-1", "ema": {}, "uncer_head": {}, "x": _RunsCode()},
               crafted)
    read = {"checkpoint": load_checkpoint, "official": load_official,
            "weights": lambda p: build_encoder("resnet18", weights=str(p))}[reader]
    with pytest.raises(CheckpointError, match="besides tensors and plain data") as info:
        read(crafted)
    assert str(crafted) in str(info.value)
    assert not marker.exists()


def test_a_folder_given_as_checkpoint_says_what_is_inside(tmp_path):
    (tmp_path / "last.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file itself "
                                              r"\(last\.pth inside\)"):
        load_checkpoint(tmp_path)
