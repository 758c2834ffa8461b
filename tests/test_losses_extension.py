"""PRCL's 2024 extension (docs/method.md section 8): global distribution prototypes (GDP) and
virtual negatives (VN), against hand values, the batch prototypes and their distributions."""

import math

import pytest
import torch
from test_losses_prcl import SINGLE, _contrast_inputs, contrast, pixel_row, random_batch

from prcl.losses import (
    GlobalPrototypes,
    PRCLLoss,
    distribution_prototypes,
    global_distribution_prototypes,
    mls_to_points,
    virtual_negatives,
)
from prcl.losses.contrast import mls_contrast_ce, mls_contrast_ce_reference
from prcl.losses.mls import mls_normalised
from prcl.losses.prototypes import class_sufficient_statistics, prototypes_from_sums


def sums(pixels, num_classes=2):
    """Packed sums of (class, mu, var) pixels in 2 dims; dim 2 has twice dim 1's variance."""
    labels = torch.tensor([c for c, _, _ in pixels], dtype=torch.long)
    mu = torch.tensor([[m, m] for _, m, _ in pixels])
    var = torch.tensor([[v, 2 * v] for _, _, v in pixels])
    return class_sufficient_statistics(mu, var, labels, num_classes)


def test_gdp_update_hand_values_two_classes_three_steps():
    gdp = GlobalPrototypes(forgetting=0.5)
    steps = [
        [(0, 2.0, 0.5), (0, 4.0, 1.0)],  # class 0: precision 2 + 1, weighted mean sum 4 + 4
        [(0, 1.0, 0.25), (1, -2.0, 0.5)],  # class 0: L = 0.5 * 3 + 4, M = 0.5 * 8 + 4
        [(1, 0.0, 1.0)],  # class 0 absent: L and M halve; class 1: L = 0.5 * 2 + 1
    ]
    # per step and class: (mean, variance of dim 1, pixel weight n); None: no prototype yet
    expected = [
        [(8 / 3, 1 / 3, 2.0), None],
        [(8 / 5.5, 1 / 5.5, 2.0), (-2.0, 0.5, 1.0)],
        [(8 / 5.5, 2 / 5.5, 1.0), (-1.0, 0.5, 1.5)],  # the unseen class's variance grows
    ]
    for pixels, want in zip(steps, expected, strict=True):
        mu, var, weight = prototypes_from_sums(gdp.fold(sums(pixels)))
        for c, row in enumerate(want):
            if row is None:
                assert weight[c] == 0
                continue
            mean, variance, n = row
            assert mu[c].tolist() == pytest.approx([mean, mean], rel=1e-6)
            assert var[c].tolist() == pytest.approx([variance, 2 * variance], rel=1e-6)
            assert weight[c].item() == pytest.approx(n)
    assert gdp.summary() == {"gdp_classes_seen": 2, "gdp_mean_var": pytest.approx(
        (2 / 5.5 + 4 / 5.5 + 0.5 + 1.0) / 4, rel=1e-6)}


def test_gdp_without_memory_is_the_batch_prototypes_exactly():
    g = torch.Generator().manual_seed(0)
    gdp = GlobalPrototypes(forgetting=0.0)
    for _ in range(3):
        mu, var = torch.randn(30, 4, generator=g), torch.rand(30, 4, generator=g)
        labels = torch.randint(-1, 3, (30,), generator=g)  # class 3 of 4 never appears
        folded = prototypes_from_sums(gdp.fold(class_sufficient_statistics(mu, var, labels, 4)))
        batch = distribution_prototypes(mu, var, labels, 4)
        assert torch.equal(folded[0], batch[0]) and torch.equal(folded[1], batch[1])
        assert torch.equal(folded[2].long(), batch[2]) and folded[2][3] == 0


def test_global_prototypes_without_memory_give_the_batch_loss_exactly():
    batch_loss = PRCLLoss(num_queries=16, num_negatives=8, temperature=0.5)
    global_loss = PRCLLoss(num_queries=16, num_negatives=8, temperature=0.5,
                           prototypes="global", gdp_forgetting=0.0)
    for seed in range(3):
        mu, var, labels, probs = random_batch(seed)
        results = []
        for loss_fn in (batch_loss, global_loss):
            mu.grad = var.grad = None
            loss = loss_fn(mu, var, labels, probs, generator=torch.Generator().manual_seed(seed))
            loss.backward()
            results.append((loss, mu.grad, var.grad))
        assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


# The loss, |d/dmu|_1 and |d/dvar|_1 of main's PRCLLoss (before the extension), random_batch(s)
# with generator seed s, and the generator's next torch.rand: the draws are unchanged too.
TODAY = {11: (1.4504454135894775, 0.14523658156394958, 1.3197154998779297, 0.4283226728439331),
         12: (1.507620096206665, 0.1034819632768631, 1.3104007244110107, 0.8006618022918701)}


@pytest.mark.parametrize("seed", sorted(TODAY))
def test_batch_prototypes_without_virtual_negatives_give_todays_loss(seed):
    loss_fn = PRCLLoss(num_queries=16, num_negatives=8, temperature=0.5, prototypes="batch",
                       gdp_forgetting=0.5, virtual_negatives=0)
    assert loss_fn.global_prototypes is None
    mu, var, labels, probs = random_batch(seed)
    g = torch.Generator().manual_seed(seed)
    loss = loss_fn(mu, var, labels, probs, generator=g)
    loss.backward()
    got = (loss.item(), mu.grad.abs().sum().item(), var.grad.abs().sum().item(),
           torch.rand(1, generator=g).item())
    assert got == pytest.approx(TODAY[seed], rel=1e-6)


def test_gdp_in_the_loss_hand_value_and_folding_rules():
    inputs = pixel_row(**SINGLE, own_probs=[0.3, 0.3, 0.5])
    loss_fn = PRCLLoss(num_queries=5, num_negatives=7, temperature=0.5, prototypes="global",
                       gdp_forgetting=0.5)
    loss_fn(*inputs)
    # second call, same batch: L = 1.5 x the batch's precision, the mean unchanged
    mls_a = -0.5 * math.log(0.5 + 0.5 / 1.5)
    mls_b = -0.5 * math.log(0.25 + 0.25 / 1.5)
    mls_ab = -0.5 * (4 / 3 + math.log(0.75))
    expected = (contrast(mls_a, mls_ab, 7, 0.5) + contrast(mls_b, mls_ab, 7, 0.5)) / 2
    assert loss_fn(*inputs).item() == pytest.approx(expected, rel=1e-5)
    state = loss_fn.global_prototypes.sums.clone()
    assert not state.requires_grad
    loss_fn.eval()  # evaluation mode uses the GDP but does not fold into it
    loss_fn(*inputs)
    assert torch.equal(loss_fn.global_prototypes.sums, state)
    loss_fn.train()
    mu, var, labels, probs = inputs
    lone = torch.zeros_like(labels)  # one class only: the loss is 0, yet the batch is folded
    assert loss_fn(mu, var, lone, probs).item() == 0.0
    assert loss_fn.global_prototypes.sums[0, -1] == 0.5 * 0.5 + 0.5 * 1 + 3
    assert loss_fn.global_prototypes.sums[1, -1] == 0.5 * 1.5


def test_a_non_finite_batch_row_is_folded_as_an_absent_class():
    batch = torch.tensor([[2.0, 4.0, 1.0], [float("nan"), 1.0, 1.0]])
    folded = global_distribution_prototypes(torch.ones(2, 3), batch, 0.5)
    assert folded.tolist() == [[2.5, 4.5, 1.5], [0.5, 0.5, 0.5]]


def test_virtual_negatives_follow_their_distribution():
    mu = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    var = torch.tensor([[0.04, 0.25, 1.0], [0.01, 0.09, 0.5]])
    radius, k = 2.0, 20000
    draws = virtual_negatives(mu, var, k, radius, torch.Generator().manual_seed(0))
    assert draws.shape == (2, k, 3)
    target_var = radius**2 * var
    assert ((draws.mean(1) - mu).abs() < 4 * (target_var / k).sqrt()).all()
    sample_var = draws.var(1)
    assert ((sample_var - target_var).abs() < 4 * target_var * math.sqrt(2 / (k - 1))).all()
    again = virtual_negatives(mu, var, k, radius, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_scores_against_points_equal_the_mls_with_zero_variance():
    g = torch.Generator().manual_seed(3)
    mu_hat = torch.nn.functional.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64))
    var = (torch.rand(5, 6, generator=g, dtype=torch.float64) + 1e-3).requires_grad_()
    mu_hat.requires_grad_()
    points = torch.nn.functional.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64))
    direct = mls_normalised(mu_hat[:, None], points[None], var[:, None], torch.zeros(1))
    assert torch.allclose(mls_to_points(mu_hat, var, points), direct)
    assert torch.autograd.gradcheck(lambda m, v: mls_to_points(m, v, points), (mu_hat, var))


def _with_extra(dtype):
    """``_contrast_inputs`` plus the scores of 6 points, two of them left out per anchor."""
    inputs = _contrast_inputs(dtype)
    g = torch.Generator().manual_seed(5)
    points = torch.nn.functional.normalize(torch.randn(6, inputs[0].shape[1], generator=g,
                                                       dtype=dtype))
    left_out = torch.arange(6)[None] // 2 == torch.arange(inputs[0].shape[0])[:, None] % 3
    return inputs, points, left_out


@pytest.mark.parametrize("temperature", [0.5, 100.0])
def test_extra_negatives_join_the_blockwise_contrast(temperature):
    inputs, points, left_out = _with_extra(torch.float32)
    weights = torch.rand(inputs[0].shape[0], generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (mls_contrast_ce, mls_contrast_ce_reference):
        inputs[0].grad = inputs[1].grad = None
        extra = mls_to_points(inputs[0], inputs[1], points).masked_fill(left_out, float("-inf"))
        losses = fn(*inputs, temperature, extra)
        (losses * weights).sum().backward()
        results.append((losses.detach(), inputs[0].grad.clone(), inputs[1].grad.clone()))
    for fast, plain in zip(*results, strict=True):
        assert torch.allclose(fast, plain, atol=1e-5, rtol=1e-5)
    without = mls_contrast_ce(*inputs, temperature)
    assert (results[0][0] > without.detach()).all()  # more negatives, larger CE


def test_extra_negatives_contrast_gradcheck():
    inputs, points, left_out = _with_extra(torch.float64)

    def loss(m, v):
        extra = mls_to_points(m, v, points).masked_fill(left_out, float("-inf"))
        return mls_contrast_ce(m, v, *inputs[2:], 0.7, extra)

    assert torch.autograd.gradcheck(loss, inputs[:2])


def test_virtual_negatives_in_the_loss_hand_value():
    # radius 0: every virtual negative is the other class's prototype mean, variance 0
    inputs = pixel_row(**SINGLE, own_probs=[0.3, 0.3, 0.5])
    k, virtual, t = 3, 2, 0.5
    loss = PRCLLoss(num_queries=5, num_negatives=k, temperature=t, virtual_negatives=virtual,
                    virtual_radius=0.0)(*inputs)
    mls_aa, mls_bb = 0.0, -0.5 * math.log(0.5)
    mls_ab = -0.5 * (4 / 3 + math.log(0.75))
    mls_a_vb = -0.5 * (2 + math.log(0.5))  # a: mû (1, 0), s 0.5 against the point (0, 1)
    mls_b_va = -0.5 * (4 + math.log(0.25))  # b: mû (0, 1), s 0.25 against the point (1, 0)

    def ce(pos, neg, vn):
        return math.log1p(k * math.exp((neg - pos) / t) + virtual * math.exp((vn - pos) / t))

    expected = (ce(mls_aa, mls_ab, mls_a_vb) + ce(mls_bb, mls_ab, mls_b_va)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
