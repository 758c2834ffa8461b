"""Mutual likelihood score between probabilistic representations (docs/method.md section 3)."""

import torch
import torch.nn.functional as F

VAR_FLOOR = 1e-6
"""Smallest variance the losses use: keeps 1 / (s_a + s_b) and log(s_a + s_b) finite."""


def mls_normalised(
    mu_hat_a: torch.Tensor, mu_hat_b: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor
) -> torch.Tensor:
    """MLS of section 3 for means that are already L2-normalised and variances already floored.

    All arguments broadcast against each other, features last (``[..., D]``); returns ``[...]``:
    ``-1/2 * mean_d[(mû_a - mû_b)^2 / (s_a + s_b) + log(s_a + s_b)]``.
    """
    var_sum = var_a + var_b
    return -0.5 * ((mu_hat_a - mu_hat_b).square() / var_sum + var_sum.log()).mean(-1)


def mutual_likelihood_score(
    mu_a: torch.Tensor, mu_b: torch.Tensor, var_a: torch.Tensor, var_b: torch.Tensor
) -> torch.Tensor:
    """Mutual likelihood score MLS(a, b) of two diagonal Gaussians (docs/method.md section 3).

    ``MLS(a, b) = -1/2 * mean_d[(mû_a,d - mû_b,d)^2 / (s_a,d + s_b,d) + log(s_a,d + s_b,d)]``
    with ``mû = mu / ||mu||_2`` over the feature dimension and ``s = sigma^2``, a mean over the
    dimensions (not a sum). Variances are clamped to ``VAR_FLOOR`` so the score stays finite.

    Args:
        mu_a, mu_b: means ``[..., D]`` (unnormalised), broadcastable against each other.
        var_a, var_b: variances ``[..., D]`` in (0, 1], broadcastable likewise.

    Returns:
        ``[...]``: the broadcast leading shape, one score per pair.
    """
    return mls_normalised(
        F.normalize(mu_a, dim=-1),
        F.normalize(mu_b, dim=-1),
        var_a.clamp_min(VAR_FLOOR),
        var_b.clamp_min(VAR_FLOOR),
    )


def mls_to_points(
    mu_hat: torch.Tensor, var: torch.Tensor, points_hat: torch.Tensor
) -> torch.Tensor:
    """MLS of section 3 between R Gaussians and V points of zero variance, as one matrix.

    With ``s_b = 0`` the denominator ``s_a`` no longer depends on b, and the score expands as
    ``MLS(a, b) = -1/(2D) * [sum_d mû_a^2/s_a - 2 sum_d (mû_a/s_a) b + sum_d b^2/s_a
    + sum_d log s_a]``: one ``[R, 2D] x [2D, V]`` matmul, never an ``[R, V, D]`` tensor.
    Differentiable in ``mu_hat`` and ``var`` by autograd.

    Args:
        mu_hat: ``[R, D]`` L2-normalised means.
        var: ``[R, D]`` variances, already floored (``VAR_FLOOR``).
        points_hat: ``[V, D]`` L2-normalised points.

    Returns:
        ``[R, V]`` scores.
    """
    precision = var.reciprocal()
    own = (mu_hat.square() * precision + var.log()).sum(1, keepdim=True)
    left = torch.cat([mu_hat * precision * -2, precision], 1)
    right = torch.cat([points_hat, points_hat.square()], 1)
    return torch.addmm(own, left, right.T).mul_(-0.5 / mu_hat.shape[1])
