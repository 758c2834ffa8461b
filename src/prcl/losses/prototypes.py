"""Distribution prototypes: the product of a class's pixel Gaussians (docs/method.md section 4)."""

from collections.abc import Callable

import torch

from prcl.losses.mls import VAR_FLOOR

ReduceSum = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over processes (e.g. an all-reduce); returns the summed tensor."""


@torch.no_grad()
def class_sufficient_statistics(
    mu: torch.Tensor,
    var: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    reduce_sum: ReduceSum | None = None,
) -> torch.Tensor:
    """Per-class sums that define the prototypes of paper Eq. 7-8, packed in one tensor.

    Args:
        mu: ``[N, D]`` pixel means (unnormalised).
        var: ``[N, D]`` pixel variances (clamped here to ``VAR_FLOOR``).
        labels: ``[N]`` int class of each pixel, -1 for pixels that do not take part.
        num_classes: C.
        reduce_sum: optional ``f(tensor) -> tensor`` that sums over processes (an all-reduce),
            called exactly once, on the packed sums; ``None`` for a single process.

    Returns:
        ``[C, 2D + 1]`` float32: ``[:, :D]`` = sum_i 1/s_i, ``[:, D:2D]`` = sum_i mu_i/s_i,
        ``[:, 2D]`` = number of pixels, so that one all-reduce sums every process's share.
    """
    dim = mu.shape[1]
    rows = torch.where(labels >= 0, labels, num_classes)  # ignored pixels go to a spare row
    precision = var.float().clamp_min(VAR_FLOOR).reciprocal_()
    stats = precision.new_zeros(num_classes + 1, 2 * dim + 1)
    stats[:, :dim].index_add_(0, rows, precision)
    stats[:, dim : 2 * dim].index_add_(0, rows, precision.mul_(mu.float()))
    stats[:, 2 * dim].index_add_(0, rows, precision.new_ones(rows.shape[0]))
    stats = stats[:num_classes]
    return stats if reduce_sum is None else reduce_sum(stats)


@torch.no_grad()
def distribution_prototypes(
    mu: torch.Tensor,
    var: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    reduce_sum: ReduceSum | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distribution prototype of every class (docs/method.md section 4, paper Eq. 7-8).

    ``s_c = 1 / sum_{i in V_c} 1/s_i`` and ``mu_c = s_c * sum_{i in V_c} mu_i / s_i`` per
    dimension: the precision-weighted product of the class's pixel Gaussians. No gradient.

    Args:
        mu: ``[N, D]`` pixel means (unnormalised; the prototype mean is unnormalised too).
        var: ``[N, D]`` pixel variances (clamped to ``VAR_FLOOR``).
        labels: ``[N]`` int class of each pixel in ``[0, C)``, -1 for ignored pixels.
        num_classes: C.
        reduce_sum: optional ``f(tensor) -> tensor`` that sums over processes (an all-reduce);
            called exactly once, on the ``[C, 2D + 1]`` tensor of per-class sums, so the
            prototypes cover the pixels of every process. ``None`` for a single process.

    Returns:
        ``(proto_mu [C, D], proto_var [C, D], counts [C] int64)`` in float32. A class with no
        pixel (count 0) holds ``proto_mu = 0`` and ``proto_var = 1`` (finite placeholders;
        callers must skip those rows by their count).
    """
    stats = class_sufficient_statistics(mu, var, labels, num_classes, reduce_sum)
    proto_mu, proto_var, counts = prototypes_from_sums(stats)
    return proto_mu, proto_var, counts.round().long()


@torch.no_grad()
def prototypes_from_sums(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7-8 from the packed sums of ``class_sufficient_statistics`` (or their decayed
    running version, ``global_distribution_prototypes``): ``s_c = 1 / stats[c, :D]``,
    ``mu_c = s_c * stats[c, D:2D]``.

    Args:
        stats: ``[C, 2D + 1]`` per-class sums of 1/s_i, mu_i/s_i and the pixel count.

    Returns:
        ``(proto_mu [C, D], proto_var [C, D], counts [C])`` in the dtype of ``stats``. A row
        without a prototype (count 0, or a precision that decayed to 0) holds the
        placeholders ``mu = 0``, ``var = 1`` and count 0.
    """
    dim = (stats.shape[1] - 1) // 2
    precision_sum, weighted_mu_sum, counts = stats.split([dim, dim, 1], dim=1)
    present = (counts > 0) & (precision_sum > 0).all(1, keepdim=True)
    counts = torch.where(present, counts, 0.0)
    proto_var = torch.where(present, precision_sum.reciprocal(), 1.0)
    proto_mu = torch.where(present, proto_var * weighted_mu_sum, 0.0)
    return proto_mu, proto_var, counts.squeeze(1)
