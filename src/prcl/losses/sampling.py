"""Which pixels take part, and batched sampling for the PRCL loss (docs/method.md 5, 6.1-6.2).

Pixels are grouped by class (``ClassSegments``); uniform draws with replacement from many
classes at once are ``offset + floor(u * count)`` into those groups, one ``torch.rand`` call
for all of them.
"""

from typing import NamedTuple

import torch

from prcl.losses.mls import mutual_likelihood_score


def uniform_pick(
    counts: torch.Tensor, offsets: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """``offsets + U{0, ..., counts - 1}`` elementwise: one uniform draw with replacement from
    each of many class-sorted segments. counts, offsets: ``[...]`` int64 with counts >= 1."""
    u = torch.rand(counts.shape, generator=generator, device=counts.device, dtype=torch.float64)
    return offsets + torch.minimum((u * counts).long(), counts - 1)


def negative_class_probs(
    proto_mu: torch.Tensor,
    proto_var: torch.Tensor,
    anchor_classes: torch.Tensor,
    counted: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Prototype-guided negative classes (docs/method.md section 6, step 2).

    Row a is ``softmax_k(MLS(proto_c, proto_k) / temperature)`` over the counted classes
    ``k != c`` for ``c = anchor_classes[a]`` (probability 0 at ``k = c``).

    Args:
        proto_mu, proto_var: ``[C, D]`` distribution prototypes.
        anchor_classes: ``[A]`` class ids that have anchors.
        counted: ``[M]`` class ids with at least one valid pixel (M >= 2).

    Returns:
        ``[A, M]`` probabilities over ``counted``.
    """
    sim = mutual_likelihood_score(
        proto_mu[anchor_classes, None], proto_mu[None, counted],
        proto_var[anchor_classes, None], proto_var[None, counted],
    )
    # Non-finite prototypes (a diverging network) would stop torch.multinomial with an error;
    # scored as equals instead, they let the loss come out NaN for the trainer's guard to see.
    sim = torch.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
    same = anchor_classes[:, None] == counted[None, :]
    return torch.softmax((sim / temperature).masked_fill(same, float("-inf")), dim=1)


class ClassSegments(NamedTuple):
    """Items grouped by class: positions ``offsets[c] : offsets[c] + counts[c]`` hold class c.

    ids: ``[n]`` item ids (flat pixel indices), classes: ``[n]`` sorted class of each,
    counts, offsets: ``[C]``.
    """

    ids: torch.Tensor
    classes: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor

    @classmethod
    def group(cls, ids: torch.Tensor, classes: torch.Tensor, num_classes: int) -> "ClassSegments":
        """Sort ``ids [n]`` by ``classes [n]`` (stable) and count each class."""
        classes, order = classes.sort(stable=True)
        counts = torch.bincount(classes, minlength=num_classes)
        return cls(ids[order], classes, counts, counts.cumsum(0) - counts)

    def draw(self, classes: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """For each entry of ``classes [...]`` (each with count >= 1), the position of one of
        its items, uniformly with replacement: ``[...]`` positions into ``ids``."""
        return uniform_pick(self.counts[classes], self.offsets[classes], generator)


def participating_pixels(
    labels: torch.Tensor, probs: torch.Tensor, strong_threshold: float
) -> tuple[ClassSegments, ClassSegments]:
    """Valid pixels and hard anchors, grouped by class (docs/method.md section 5).

    Args:
        labels: ``[B, h, w]`` class of each participating (valid) pixel, -1 elsewhere.
        probs: ``[B, C, h, w]`` the student's softmax (no gradient is taken).
        strong_threshold: anchors are valid pixels of c with ``probs[:, c] < strong_threshold``.

    Returns:
        ``(valid, anchors)`` whose ids are flat pixel indices ``b * h * w + y * w + x``.
    """
    num_classes, hw = probs.shape[1], labels[0].numel()
    flat_labels = labels.reshape(-1)
    valid_ids = (flat_labels >= 0).nonzero().squeeze(1)
    valid = ClassSegments.group(valid_ids, flat_labels[valid_ids], num_classes)
    own_prob = probs.detach().flatten(2)[valid.ids // hw, valid.classes, valid.ids % hw]
    hard = own_prob < strong_threshold
    return valid, ClassSegments.group(valid.ids[hard], valid.classes[hard], num_classes)


def virtual_negatives(
    proto_mu: torch.Tensor,
    proto_var: torch.Tensor,
    per_class: int,
    radius: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Virtual negatives of PRCL's 2024 extension (docs/method.md section 8), drawn from the
    classes' global distribution prototypes: ``v = mu_c + r * sigma_c * eps``,
    ``eps ~ N(0, I)``, i.e. ``v ~ N(mu_c, r^2 diag(s_c))`` per class c, with ``sigma_c =
    sqrt(s_c)`` and ``r = radius``.

    Args:
        proto_mu, proto_var: ``[M, D]`` the classes' prototypes (mean unnormalised, variance).
        per_class: K draws per class.
        radius: r >= 0 scales the prototype's standard deviation.
        generator: the loss's generator (on the prototypes' device), one ``torch.randn`` call.

    Returns:
        ``[M, K, D]`` draws, unnormalised.
    """
    shape = (proto_mu.shape[0], per_class, proto_mu.shape[1])
    eps = torch.randn(shape, generator=generator, device=proto_mu.device, dtype=proto_mu.dtype)
    return torch.addcmul(proto_mu[:, None], proto_var.sqrt().mul(radius)[:, None], eps)
