"""MLS, distribution prototypes and the pseudo-label loss (docs/method.md sections 3, 4, 7.7)."""

import math

import pytest
import torch

from prcl.losses import distribution_prototypes, mutual_likelihood_score, pseudo_label_ce
from prcl.losses.prototypes import class_sufficient_statistics


def test_mls_hand_values_mean_over_dims():
    mu_a = torch.tensor([3.0, 4.0])  # normalised: (0.6, 0.8)
    mu_b = torch.tensor([2.0, 0.0])  # normalised: (1, 0); squared differences (0.16, 0.64)
    # var sums (1, 1): -1/2 * mean(0.16, 0.64)
    ones = mutual_likelihood_score(mu_a, mu_b, torch.tensor([0.25, 0.5]), torch.tensor([0.75, 0.5]))
    assert ones.item() == pytest.approx(-0.2, abs=1e-6)
    # var sums (0.5, 2): -1/2 * mean(0.16 / 0.5 + ln 0.5, 0.64 / 2 + ln 2) = -0.16
    var = torch.tensor([0.25, 1.0])
    mixed = mutual_likelihood_score(mu_a, mu_b, var, var)
    assert mixed.item() == pytest.approx(-0.16, abs=1e-6)


def test_mls_broadcasts_over_leading_dims():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(3, 1, 5, generator=g), torch.randn(1, 4, 5, generator=g)
    var_a, var_b = torch.rand(3, 1, 5, generator=g), torch.rand(1, 4, 5, generator=g)
    scores = mutual_likelihood_score(mu_a, mu_b, var_a, var_b)
    assert scores.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            one = mutual_likelihood_score(mu_a[i, 0], mu_b[0, j], var_a[i, 0], var_b[0, j])
            assert scores[i, j].item() == pytest.approx(one.item(), abs=1e-6)
    assert torch.allclose(scores, mutual_likelihood_score(mu_b, mu_a, var_b, var_a))  # symmetric


@pytest.mark.parametrize("variance", [0.0, 1e-12, 1.0 - 1e-7, 1.0])
def test_mls_finite_with_extreme_variances(variance):
    mu_a = torch.randn(4, 8, requires_grad=True)
    var_a = torch.full((4, 8), variance, requires_grad=True)
    score = mutual_likelihood_score(mu_a, torch.randn(4, 8), var_a, torch.full((4, 8), variance))
    score.sum().backward()
    assert torch.isfinite(score).all()
    assert torch.isfinite(mu_a.grad).all() and torch.isfinite(var_a.grad).all()


def test_prototypes_hand_values_and_empty_rows():
    mu = torch.tensor([[0.0, 2.0], [4.0, 2.0], [7.0, 7.0], [1.0, -1.0]])
    var = torch.tensor([[1.0, 1.0], [1 / 3, 1 / 3], [0.5, 0.5], [0.5, 0.25]])
    labels = torch.tensor([0, 0, -1, 2])
    proto_mu, proto_var, counts = distribution_prototypes(mu, var, labels, num_classes=3)
    # class 0: precisions 1 and 3 -> s = 1/4, mu = (0 * 1 + 4 * 3, 2 * 1 + 2 * 3) / 4
    assert torch.allclose(proto_var[0], torch.tensor([0.25, 0.25]))
    assert torch.allclose(proto_mu[0], torch.tensor([3.0, 2.0]))
    # class 2: a single pixel is its own prototype
    assert torch.allclose(proto_var[2], var[3]) and torch.allclose(proto_mu[2], mu[3])
    # class 1 has no pixel: documented placeholders
    assert torch.equal(proto_mu[1], torch.zeros(2)) and torch.equal(proto_var[1], torch.ones(2))
    assert counts.tolist() == [2, 0, 1] and counts.dtype == torch.int64


def test_prototypes_no_gradient_and_one_reduce_call():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(10, 4, generator=g, requires_grad=True)
    var = torch.rand(10, 4, generator=g).requires_grad_()
    labels = torch.randint(-1, 3, (10,), generator=g)
    other_rank = (torch.randn(6, 4, generator=g), torch.rand(6, 4, generator=g),
                  torch.randint(0, 3, (6,), generator=g))
    calls = []

    def reduce_sum(stats: torch.Tensor) -> torch.Tensor:
        calls.append(stats.shape)
        return stats + class_sufficient_statistics(*other_rank, num_classes=3)

    reduced = distribution_prototypes(mu, var, labels, 3, reduce_sum=reduce_sum)
    gathered = distribution_prototypes(
        torch.cat([mu, other_rank[0]]), torch.cat([var, other_rank[1]]),
        torch.cat([labels, other_rank[2]]), 3,
    )
    assert calls == [torch.Size([3, 9])]
    for got, want in zip(reduced, gathered, strict=True):
        assert not got.requires_grad
        assert torch.allclose(got.float(), want.float(), atol=1e-5)


def _ce(z_true: float, z_other: float) -> float:
    return math.log1p(math.exp(z_other - z_true))


def test_pseudo_label_ce_hand_value():
    # image 0: pixels labelled 0, 1 (CE c00, c01); 1 of 2 confident -> weight 1/2
    # image 1: pixels labelled 1, ignored; 1 confident of 1 valid pixel -> weight 1
    logits = torch.tensor([[[[2.0, 0.5]], [[1.0, 1.5]]], [[[0.0, 3.0]], [[1.0, 0.0]]]])
    pseudo = torch.tensor([[[0, 1]], [[1, 255]]])
    confidence = torch.tensor([[[0.99, 0.5]], [[0.98, 0.2]]])
    c00, c01, c10 = _ce(2.0, 1.0), _ce(1.5, 0.5), _ce(1.0, 0.0)
    expected = (0.5 * c00 + 0.5 * c01 + 1.0 * c10) / 3
    assert pseudo_label_ce(logits, pseudo, confidence).item() == pytest.approx(expected, rel=1e-6)
    # per pixel: only the two confident pixels (c00, c10) count, each with weight 1
    pixel = pseudo_label_ce(logits, pseudo, confidence, weighting="pixel")
    assert pixel.item() == pytest.approx((c00 + c10) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="pixel"):
        pseudo_label_ce(logits, pseudo, confidence, weighting="box")


def test_pseudo_label_ce_skips_zero_loss_pixels_and_empty_images():
    # image 0: one pixel with CE exactly 0 (margin 200), one with CE > 0; image 1 all ignored
    logits = torch.tensor([[[[100.0, 0.0]], [[-100.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
    pseudo = torch.tensor([[[0, 1]], [[255, 255]]])
    confidence = torch.ones(2, 1, 2)
    loss = pseudo_label_ce(logits, pseudo, confidence)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)  # only the CE = ln 2 pixel counts


def test_pseudo_label_ce_all_ignored_is_zero_in_graph():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = pseudo_label_ce(logits, torch.full((2, 4, 4), 255), torch.rand(2, 4, 4))
    assert loss.item() == 0.0 and loss.requires_grad
    pixel = pseudo_label_ce(logits, torch.full((2, 4, 4), 255), torch.ones(2, 4, 4),
                            weighting="pixel")
    assert pixel.item() == 0.0 and pixel.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_pseudo_label_ce_under_autocast_is_float32():
    logits = torch.randn(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pseudo_label_ce(logits, pseudo, torch.rand(2, 4, 4))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
