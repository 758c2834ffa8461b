"""The vectorised PRCL loss (docs/method.md sections 5-6) against hand values and the loop
version."""

import functools
import math

import pytest
import torch
from prcl_reference import loop_prcl_loss

from prcl.losses import PRCLLoss, mutual_likelihood_score
from prcl.losses import contrast as contrast_module
from prcl.losses.contrast import mls_contrast_ce, mls_contrast_ce_reference
from prcl.losses.sampling import negative_class_probs, uniform_pick


def pixel_row(mus, vars_, labels, own_probs, num_classes=3):
    """One image of P pixels in a row: mu, var [1, D, 1, P], labels [1, 1, P], probs [1, C, 1, P]
    where each pixel's own class gets ``own_probs[i]`` and the rest is spread evenly."""
    mu = torch.tensor(mus).T[None, :, None].contiguous().requires_grad_()
    var = torch.tensor(vars_).T[None, :, None].contiguous().requires_grad_()
    lab = torch.tensor(labels)
    probs = torch.empty(num_classes, len(labels))
    for i, (c, p) in enumerate(zip(labels, own_probs, strict=True)):
        probs[:, i] = (1 - p) / (num_classes - 1)
        if c >= 0:
            probs[c, i] = p
    return mu, var, lab[None, None], probs[None, :, None]


def contrast(mls_pos: float, mls_neg: float, negatives: int, temperature: float) -> float:
    """CE of [positive, K identical negatives] logits with target 0."""
    return math.log1p(negatives * math.exp((mls_neg - mls_pos) / temperature))


def both_losses(inputs, **kwargs):
    """The vectorised and the loop loss on the same inputs."""
    vectorised = PRCLLoss(**kwargs)(*inputs, generator=torch.Generator().manual_seed(0))
    loop = loop_prcl_loss(*inputs, **kwargs, generator=torch.Generator().manual_seed(0))
    return vectorised, loop


# a: mû (1, 0), s 0.5 | b: mû (0, 1), s 0.25 -> MLS(a,a) = 0, MLS(b,b) = -ln(0.5)/2,
# MLS(a,b) = -1/2 (mean(1/0.75, 1/0.75) + ln 0.75)
MLS_AA, MLS_BB = 0.0, -0.5 * math.log(0.5)
MLS_AB = -0.5 * (4 / 3 + math.log(0.75))
SINGLE = dict(mus=[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]],
              vars_=[[0.5, 0.5], [0.25, 0.25], [0.1, 0.9]], labels=[0, 1, -1])


def test_two_classes_one_pixel_each_hand_value():
    inputs = pixel_row(**SINGLE, own_probs=[0.3, 0.3, 0.5])
    k, t = 7, 0.5
    expected = (contrast(MLS_AA, MLS_AB, k, t) + contrast(MLS_BB, MLS_AB, k, t)) / 2
    for loss in both_losses(inputs, num_queries=5, num_negatives=k, temperature=t):
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_class_without_anchors_counts_in_denominator():
    inputs = pixel_row(**SINGLE, own_probs=[0.3, 0.9, 0.5])  # b is confident: no anchor
    k, t = 7, 0.5
    expected = contrast(MLS_AA, MLS_AB, k, t) / 2
    for loss in both_losses(inputs, num_queries=5, num_negatives=k, temperature=t):
        assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_identical_pixels_hand_value():
    # class 0: four copies of (mû (1, 0), s 0.4) -> prototype s = 0.1; class 1: two copies of
    # (mû (0, 1), s 0.5) -> prototype s = 0.25; an ignored pixel in between.
    mus = [[2.0, 0.0]] * 4 + [[9.0, 1.0]] + [[0.0, 3.0]] * 2
    vars_ = [[0.4, 0.4]] * 4 + [[0.3, 0.3]] + [[0.5, 0.5]] * 2
    inputs = pixel_row(mus, vars_, [0, 0, 0, 0, -1, 1, 1], [0.1] * 7)
    k, t = 3, 2.0
    mls_a_proto = -0.5 * math.log(0.4 + 0.1)
    mls_b_proto = -0.5 * math.log(0.5 + 0.25)
    mls_ab = -0.5 * (1 / 0.9 + math.log(0.9))
    expected = (contrast(mls_a_proto, mls_ab, k, t) + contrast(mls_b_proto, mls_ab, k, t)) / 2
    for loss in both_losses(inputs, num_queries=4, num_negatives=k, temperature=t):
        assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("labels, own", [
    ([0, 0, -1], [0.3, 0.3, 0.3]),  # one class
    ([-1, -1, -1], [0.3, 0.3, 0.3]),  # none
    ([0, 1, -1], [0.9, 0.95, 0.3]),  # two classes, no anchor
])
def test_degenerate_batches_give_a_zero_in_the_graph(labels, own):
    mu, var, lab, probs = pixel_row(SINGLE["mus"], SINGLE["vars_"], labels, own)
    for loss in (PRCLLoss()(mu, var, lab, probs), loop_prcl_loss(mu, var, lab, probs)):
        assert loss.item() == 0.0 and loss.requires_grad
        mu.grad = var.grad = None
        loss.backward()
        assert torch.equal(mu.grad, torch.zeros_like(mu))
        assert torch.equal(var.grad, torch.zeros_like(var))


def random_batch(seed, batch=2, dims=8, size=6, classes=5, present=4):
    """Clustered representations: mu [B, D, s, s] around one centre per class, var in (0.05,
    0.95), labels with ~15% ignored pixels, probs with ~30% confident (non-anchor) pixels."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randperm(classes, generator=g)[:present]
    labels = cls[torch.randint(present, (batch, size, size), generator=g)]
    labels[torch.rand(batch, size, size, generator=g) < 0.15] = -1
    centres = torch.randn(classes, dims, generator=g) * 2
    noise = torch.randn(batch, size, size, dims, generator=g)
    mu = (centres[labels.clamp_min(0)] + noise).permute(0, 3, 1, 2).contiguous()
    var = torch.rand(batch, dims, size, size, generator=g) * 0.9 + 0.05
    probs = torch.randn(batch, classes, size, size, generator=g).softmax(1)
    own = torch.where(torch.rand(batch, size, size, generator=g) < 0.3, 0.9, 0.5)
    probs.scatter_(1, labels.clamp_min(0)[:, None], own[:, None])
    return mu.requires_grad_(), var.requires_grad_(), labels, probs


def test_gradients_only_reach_anchor_pixels():
    mu, var, labels, probs = random_batch(3)
    PRCLLoss(num_queries=64, num_negatives=16)(mu, var, labels, probs).backward()
    own = probs.gather(1, labels.clamp_min(0)[:, None])[:, 0]
    anchor = (labels >= 0) & (own < 0.8)
    assert ((labels >= 0) & ~anchor).any() and (labels < 0).any()
    for grad in (mu.grad, var.grad):
        touched = grad.abs().sum(1) > 0
        assert not (touched & ~anchor).any()
        assert touched.sum() > anchor.sum() // 2


def test_same_generator_same_value():
    inputs = random_batch(4)
    loss = PRCLLoss(num_queries=16, num_negatives=8, temperature=0.5)
    first = loss(*inputs, generator=torch.Generator().manual_seed(7))
    again = loss(*inputs, generator=torch.Generator().manual_seed(7))
    other = loss(*inputs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add overhead (a lot on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("temperature", [0.5, 100.0])
def test_agrees_with_loop_implementation_in_distribution(temperature, one_thread):
    """Loss and two gradient projections: means over 300 draws within 4 standard errors."""
    mu, var, labels, probs = random_batch(5)
    g = torch.Generator().manual_seed(0)
    direction_mu = torch.randn(mu.shape, generator=g)
    direction_var = torch.randn(var.shape, generator=g)
    sizes = dict(num_queries=4, num_negatives=6, temperature=temperature)
    prcl, loop = PRCLLoss(**sizes), functools.partial(loop_prcl_loss, **sizes)
    stats = {}
    for name, fn in (("vectorised", prcl), ("loop", loop)):
        draws = []
        for seed in range(300):
            mu.grad = var.grad = None
            loss = fn(mu, var, labels, probs, generator=torch.Generator().manual_seed(seed))
            loss.backward()
            draws.append([loss.item(), (mu.grad * direction_mu).sum().item(),
                          (var.grad * direction_var).sum().item()])
        stats[name] = torch.tensor(draws, dtype=torch.float64)
    mean_v, mean_l = stats["vectorised"].mean(0), stats["loop"].mean(0)
    se = (stats["vectorised"].var(0) / 300 + stats["loop"].var(0) / 300).sqrt()
    assert ((mean_v - mean_l).abs() < 4 * se).all(), (mean_v, mean_l, se)


def test_negative_class_probs_follow_prototype_similarity():
    g = torch.Generator().manual_seed(2)
    proto_mu, proto_var = torch.randn(5, 6, generator=g), torch.rand(5, 6, generator=g)
    counted, anchors = torch.tensor([0, 2, 3, 4]), torch.tensor([2, 4])
    probs = negative_class_probs(proto_mu, proto_var, anchors, counted, temperature=0.5)
    for row, c in enumerate(anchors.tolist()):
        others = [k for k in counted.tolist() if k != c]
        sim = torch.stack([mutual_likelihood_score(proto_mu[c], proto_mu[k], proto_var[c],
                                                   proto_var[k]) for k in others])
        expected = dict(zip(others, torch.softmax(sim / 0.5, 0).tolist(), strict=True))
        for col, k in enumerate(counted.tolist()):
            assert probs[row, col].item() == pytest.approx(expected.get(k, 0.0), abs=1e-6)


def test_uniform_pick_stays_in_segment_and_is_uniform():
    n = 30000
    counts = torch.tensor([3, 5])[:, None].expand(2, n)
    offsets = torch.tensor([10, 20])[:, None].expand(2, n)
    picks = uniform_pick(counts, offsets, torch.Generator().manual_seed(0))
    for row, (count, offset) in enumerate(((3, 10), (5, 20))):
        freq = torch.bincount(picks[row] - offset, minlength=count).double() / n
        assert freq.numel() == count
        p = 1 / count
        assert ((freq - p).abs() < 5 * math.sqrt(p * (1 - p) / n)).all()


def _contrast_inputs(dtype, rows=7, pool=11, negatives=5, dims=6):
    g = torch.Generator().manual_seed(0)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=1)

    def variance(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype) + 1e-3

    anchors = (unit(rows, dims).requires_grad_(), variance(rows, dims).requires_grad_())
    positives = (unit(rows, dims), variance(rows, dims))
    negatives_pool = (unit(pool, dims), variance(pool, dims))
    index = torch.randint(pool, (rows, negatives), generator=g)
    return (*anchors, *positives, *negatives_pool, index)


@pytest.mark.parametrize("block_elements", [1, 2 * 5 * 6 + 1, 1 << 19])
@pytest.mark.parametrize("temperature", [0.5, 100.0])
def test_blockwise_contrast_matches_materialised(monkeypatch, block_elements, temperature):
    """Same sampled indices: values and gradients of the fast path equal the plain one."""
    monkeypatch.setitem(contrast_module.BLOCK_ELEMENTS, "cpu", block_elements)
    inputs = _contrast_inputs(torch.float32)
    weights = torch.rand(inputs[0].shape[0], generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (mls_contrast_ce, mls_contrast_ce_reference):
        inputs[0].grad = inputs[1].grad = None
        losses = fn(*inputs, temperature)
        (losses * weights).sum().backward()
        results.append((losses.detach(), inputs[0].grad.clone(), inputs[1].grad.clone()))
    for fast, plain in zip(*results, strict=True):
        assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)


def test_blockwise_contrast_gradcheck_and_no_grad():
    inputs = _contrast_inputs(torch.float64, rows=3, negatives=4)
    assert torch.autograd.gradcheck(
        lambda m, v: mls_contrast_ce(m, v, *inputs[2:], 0.7), inputs[:2]
    )
    with torch.no_grad():
        plain = mls_contrast_ce(*inputs, 0.7)
    assert torch.allclose(plain, mls_contrast_ce_reference(*inputs, 0.7))


@pytest.mark.parametrize("variance", [0.0, 1.0])
def test_finite_for_extreme_variances(variance):
    mu, var, labels, probs = random_batch(6)
    var = torch.full_like(var, variance).requires_grad_()
    loss = PRCLLoss(num_queries=8, num_negatives=8, temperature=0.5)(mu, var, labels, probs)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    assert torch.isfinite(mu.grad).all() and torch.isfinite(var.grad).all()


def test_float32_under_autocast():
    mu, var, labels, probs = random_batch(7)
    low = [t.detach().bfloat16().requires_grad_() for t in (mu, var)]
    prcl = PRCLLoss(num_queries=8, num_negatives=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prcl(*low, labels, probs.bfloat16(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and low[0].grad.dtype == torch.bfloat16
    plain = prcl(*(t.detach().float() for t in low), labels, probs.bfloat16().float(),
                 generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_reduce_sum_sees_prototype_statistics_once():
    inputs = random_batch(8)
    calls = []

    def reduce_sum(stats: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(stats.shape))
        return stats

    kwargs = dict(num_queries=8, num_negatives=8, temperature=0.5)
    with_reduce = PRCLLoss(**kwargs, reduce_sum=reduce_sum)(
        *inputs, generator=torch.Generator().manual_seed(0))
    without = PRCLLoss(**kwargs)(*inputs, generator=torch.Generator().manual_seed(0))
    assert calls == [(5, 2 * 8 + 1)] and torch.equal(with_reduce, without)
