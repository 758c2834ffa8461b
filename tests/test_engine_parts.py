import math

import numpy as np
import pytest
import torch

from prcl.engine.batchnorm_counts import BatchNormCounts
from prcl.engine.ema import ema_decay, ema_update
from prcl.engine.loaders import InfiniteSampler, SeededSamples
from prcl.engine.schedules import poly_lr, ramp_down
from prcl.evaluation import ConfusionMatrix, predict_sliding, predict_whole
from prcl.models import build_model


def test_ema_decay_and_update_are_exact():
    assert ema_decay(0, 0.99) == 0.0
    assert ema_decay(1, 0.99) == 0.5
    assert ema_decay(9, 0.99) == pytest.approx(0.9)
    assert ema_decay(10_000, 0.99) == 0.99
    teacher, student = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    ema_update(teacher, student, step=1, alpha=0.99)
    assert torch.allclose(teacher.weight, torch.full((1, 2), 2.0))
    ema_update(teacher, student, step=0, alpha=0.99)
    assert torch.equal(teacher.weight, student.weight)


def test_ema_averages_batchnorm_statistics_only_where_asked():
    def net():
        return torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2))

    teacher, student = net(), net()
    for bn in student:
        bn.running_mean.fill_(4.0)
        bn.num_batches_tracked.fill_(7)
    ema_update(teacher, student, step=1, alpha=0.99)
    assert torch.equal(teacher[0].running_mean, torch.zeros(2))
    ema_update(teacher, student, step=1, alpha=0.99, buffers=("1",))
    assert torch.equal(teacher[0].running_mean, torch.zeros(2))
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 2.0))
    ema_update(teacher, student, step=1, alpha=0.99, buffers=("",))
    assert torch.equal(teacher[0].running_mean, torch.full((2,), 2.0))
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 3.0))
    assert teacher[1].num_batches_tracked.item() == 0  # counters are not averaged


def test_ema_of_mixed_dtypes_matches_lerp_per_tensor():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).double())
    student = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2).double())
    expected = [t.detach().lerp(s.detach(), 0.25)
                for t, s in zip(teacher.parameters(), student.parameters(), strict=True)]
    ema_update(teacher, student, step=3, alpha=0.99)
    for got, want in zip(teacher.parameters(), expected, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_ramp_down_follows_the_formula():
    assert ramp_down(0, 1.0, 0.0, -5.0, 200) == 1.0
    assert ramp_down(100, 1.0, 0.0, -5.0, 200) == pytest.approx(math.exp(-1.25))
    assert ramp_down(200, 1.0, 0.0, -5.0, 200) == pytest.approx(math.exp(-5))
    assert ramp_down(400, 1.0, 0.0, -5.0, 200) == pytest.approx(math.exp(-5))
    assert ramp_down(150, 1.0, 0.1, -5.0, 200) == 0.1


def test_poly_lr_decays_to_the_floor():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.01)
    sched = poly_lr(opt, total_steps=10, power=0.9, min_lr=1e-6)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.01
    assert lrs[5] == pytest.approx(0.01 * 0.5**0.9)
    assert lrs[10] == pytest.approx(1e-6) and lrs[11] == pytest.approx(1e-6)


def test_poly_lr_warms_up_linearly_then_decays():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    sched = poly_lr(opt, total_steps=10, power=1.0, min_lr=1e-6, lr_warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.1 * min(1, (t + 1) / 4) * (1 - t / 10) for t in range(10)]
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(0.025) and lrs[3] == pytest.approx(0.07)


def test_infinite_sampler_resumes_and_shards():
    full = InfiniteSampler(10, seed=3)
    first = [next(it) for it in [iter(full)] for _ in range(25)]
    resumed = iter(InfiniteSampler(10, seed=3, start=13))
    assert [next(resumed) for _ in range(12)] == first[13:]
    assert sorted(i for i, _ in first[:10]) == list(range(10))
    assert len({s for _, s in first}) == 25
    shards = [iter(InfiniteSampler(10, seed=3, rank=r, world_size=2)) for r in range(2)]
    taken = [[next(s)[0] for _ in range(5)] for s in shards]
    assert sorted(taken[0] + taken[1]) == list(range(10))


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.rand(2)

    data = SeededSamples(Noise())
    state = torch.get_rng_state()
    assert torch.equal(data[(1, 42)], data[(2, 42)])
    assert not torch.equal(data[(1, 42)], data[(1, 43)])
    assert torch.equal(torch.get_rng_state(), state)


def test_confusion_matrix_against_numpy():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 20, 20))
    target[:, :2] = 255
    pred = rng.integers(0, 4, size=(3, 20, 20))
    pred[pred == 2] = 0
    pred[target == 2] = 2
    cm = ConfusionMatrix(5)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    keep = target != 255
    ious = []
    for c in range(5):
        tp = np.sum((pred == c) & (target == c) & keep)
        union = np.sum(((pred == c) | (target == c)) & keep)
        ious.append(tp / union if union else np.nan)
    scores = cm.scores()
    assert scores.iou[2] == 1.0 and math.isnan(scores.iou[4])
    assert np.allclose(scores.iou[:4], ious[:4])
    assert scores.miou == pytest.approx(np.nanmean(ious))
    with pytest.raises(ValueError, match="only 5 classes"):
        cm.update(torch.tensor([1]), torch.tensor([7]))


def test_sliding_window_covers_the_image_and_averages_overlaps():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3).eval()
    image = torch.rand(1, 3, 48, 80)
    tiles = predict_sliding(model, image, window=32, stride=24, uncertainty=True)
    assert tiles.probs.shape == (1, 3, 48, 80) and tiles.uncertainty.shape == (1, 1, 48, 80)
    assert torch.allclose(tiles.probs.sum(1), torch.ones(1, 48, 80), atol=1e-5)
    two = predict_sliding(model, image, window=48, stride=48)
    left = predict_whole(model, image[..., :48]).probs
    right = predict_whole(model, image[..., 32:]).probs
    assert torch.allclose(two.probs[..., :32], left[..., :32], atol=1e-5)
    assert torch.allclose(two.probs[..., 48:], right[..., 16:], atol=1e-5)
    assert torch.allclose(two.probs[..., 32:48], (left[..., 32:] + right[..., :16]) / 2,
                          atol=1e-5)


def test_batchnorm_counters_deferred_end_where_each_pass_would_leave_them():
    def net():
        return torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2),
                                   torch.nn.BatchNorm1d(2, momentum=None))

    deferred, plain = net(), net()
    shared = deferred[0]  # a layer met twice is counted once
    counts = BatchNormCounts(deferred, torch.nn.Sequential(shared))
    assert len(counts.layers) == 2  # the cumulative-average layer reads its counter: left out
    x = torch.randn(4, 2)
    with counts.deferred():
        for _ in range(2):
            deferred[:2](x)
        deferred[0](x)
        deferred[2](x)
        deferred.eval()(x)  # evaluation passes do not count
        deferred.train()
    for _ in range(2):
        plain[:2](x)
    plain[0](x)
    plain[2](x)
    got = [m.num_batches_tracked for m in deferred]
    assert [int(t) for t in got] == [3, 2, 1]
    for a, b in zip(deferred.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["whole", "sliding"])
def test_evaluation_of_whole_images_does_not_autotune_cudnn(monkeypatch, mode):
    import importlib

    from prcl.config import EvalConfig

    evaluate_module = importlib.import_module("prcl.evaluation.evaluate")
    from prcl.evaluation.inference import Prediction

    seen = []

    def fake_predict(model, images, cfg, uncertainty=False):
        seen.append(torch.backends.cudnn.benchmark)
        return Prediction(torch.rand(1, 2, *images.shape[-2:]), None)

    monkeypatch.setattr(evaluate_module, "predict", fake_predict)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    data = [(torch.rand(3, 8 + i, 9), torch.zeros(8 + i, 9, dtype=torch.long)) for i in range(3)]
    evaluate_module.evaluate(torch.nn.Identity(), data, 2, EvalConfig(mode=mode))
    assert seen == [mode == "sliding"] * 3 and torch.backends.cudnn.benchmark
