"""The PRCL loss: probabilistic representation contrastive learning (docs/method.md sections 5-6),
with the 2024 extension's global prototypes and virtual negatives as options (section 8).

Vectorised over classes, queries and negatives: the anchors and negatives of every class are
drawn in one batched call each (``prcl.losses.sampling``), and the cross-entropy over the
``[R, 1 + K, D]`` MLS logits is evaluated blockwise by ``mls_contrast_ce``.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from prcl.losses.contrast import mls_contrast_ce
from prcl.losses.global_prototypes import GlobalPrototypes
from prcl.losses.mls import VAR_FLOOR, mls_to_points
from prcl.losses.prototypes import ReduceSum, class_sufficient_statistics, prototypes_from_sums
from prcl.losses.sampling import negative_class_probs, participating_pixels, virtual_negatives

PROTOTYPES = ("batch", "global")


class ContrastiveStatistics(NamedTuple):
    """How far the last call's loss is from chance (docs/method.md 6.6): ``[]`` device
    tensors, both 0 when the call had no anchor to score.

    chance: the mean over anchors of ln(number of candidates), the loss of a uniform softmax
    (ln(1 + num_negatives) without virtual negatives). positive_probability: the mean over
    anchors of the softmax probability of the positive, exp(-loss_r)."""

    chance: torch.Tensor
    positive_probability: torch.Tensor


class PRCLLoss(nn.Module):
    """Probabilistic representation contrastive loss (docs/method.md sections 5-6; no parameters).

    For every counted class c (>= 1 valid pixel in this call's ``labels``) that has anchors
    (valid pixels of c with ``probs[:, c] < strong_threshold``): draw ``num_queries`` anchors
    uniformly with replacement; draw ``num_queries x num_negatives`` negative classes from
    ``softmax_k(MLS(proto_c, proto_k) / temperature)`` over the other counted classes, and for
    each one of that class's valid pixels uniformly with replacement; the positive is c's
    distribution prototype; loss_c = CE(MLS(anchor, [positive, negatives]) / temperature,
    target 0) averaged over queries. Loss = sum_c loss_c / (number of counted classes,
    including those without anchors). Prototypes and negatives are detached: gradients reach
    the anchors' mu and var only. With fewer than two counted classes (or no anchor) the loss
    is ``0 * (mu.sum() + var.sum())``, a zero that keeps every parameter in the graph.

    The 2024 extension (docs/method.md section 8), off by default: ``prototypes="global"`` takes
    the positive and the negative-class weights from the global distribution prototypes
    (``global_distribution_prototypes``, forgetting factor ``gdp_forgetting``, this call's
    batch folded in) instead of the batch's; ``virtual_negatives=K > 0`` adds, for every
    anchor, K negatives per other class the GDP has seen, ``v ~ N(mu_k, r^2 diag(s_k))``
    (``virtual_negatives``, r = ``virtual_radius``), scored as points of zero variance
    (``mls_to_points``) and appended to the anchor's logits after the real negatives. The
    draws of one call are shared by its anchors. The GDP (``global_prototypes``) exists when
    either option is on; it is folded on every call in training mode (``train()``, as
    BatchNorm's running statistics), before the early return, so that every process folds
    the same all-reduced sums.

    After every call ``statistics`` (``ContrastiveStatistics``) says how far its loss is from
    chance, as device tensors (no host read).

    Computed in float32 with autocast disabled. Sampling uses ``torch.rand``,
    ``torch.multinomial`` and ``torch.randn`` on the inputs' device with ``generator``, whose
    device must be ``mu.device`` (``None``: that device's default generator); same generator
    state, same loss. The virtual negatives are drawn last, so with K = 0 every other draw is
    what it was without them.

    Args:
        num_queries: anchors per class [256].
        num_negatives: negatives per anchor [512].
        temperature: divides every MLS, in the logits and the negative-class softmax [100].
        strong_threshold: anchors are valid pixels whose own-class probability is below it [0.8].
        reduce_sum: sums the prototype statistics over processes (see
            ``distribution_prototypes``); anchors and negatives stay local.
        prototypes: ``"batch"`` (the AAAI paper) or ``"global"`` (the GDP) for the positive.
        gdp_forgetting: gamma of ``global_distribution_prototypes`` in [0, 1] [0.99].
        virtual_negatives: K virtual negatives per other class and anchor; 0 = none.
        virtual_radius: r, in units of the GDP's standard deviation [1].
    """

    def __init__(
        self,
        num_queries: int = 256,
        num_negatives: int = 512,
        temperature: float = 100.0,
        strong_threshold: float = 0.8,
        reduce_sum: ReduceSum | None = None,
        prototypes: str = "batch",
        gdp_forgetting: float = 0.99,
        virtual_negatives: int = 0,
        virtual_radius: float = 1.0,
    ) -> None:
        super().__init__()
        if prototypes not in PROTOTYPES:
            raise ValueError(f"prototypes '{prototypes}': choose 'batch' or 'global'")
        self.num_queries = num_queries
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.strong_threshold = strong_threshold
        self.reduce_sum = reduce_sum
        self.prototypes = prototypes
        self.virtual_negatives = virtual_negatives
        self.virtual_radius = virtual_radius
        self.global_prototypes = None
        if prototypes == "global" or virtual_negatives > 0:
            self.global_prototypes = GlobalPrototypes(gdp_forgetting)
        self.statistics = ContrastiveStatistics(torch.zeros(()), torch.zeros(()))

    def forward(
        self,
        mu: torch.Tensor,
        var: torch.Tensor,
        labels: torch.Tensor,
        probs: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """mu, var: ``[B, D, h, w]``; labels: ``[B, h, w]`` int class of each participating
        pixel, -1 elsewhere; probs: ``[B, C, h, w]`` the student's softmax. Returns ``[]``."""
        with torch.autocast(device_type=mu.device.type, enabled=False):
            return self._loss(mu.float(), var.float(), labels, probs.float(), generator)

    def _loss(self, mu, var, labels, probs, generator):
        """``forward`` in float32; the steps follow docs/method.md sections 5, 4 and 6.1-6.4."""
        num_classes = probs.shape[1]
        valid, anchors = participating_pixels(labels, probs, self.strong_threshold)
        mu_pix, var_pix = mu.flatten(2).transpose(1, 2), var.flatten(2).transpose(1, 2)
        hw = mu_pix.shape[1]
        image, pixel = valid.ids // hw, valid.ids % hw
        with torch.no_grad():
            pool_mu = mu_pix[image, pixel]
            pool_var = var_pix[image, pixel].clamp_min_(VAR_FLOOR)
            # before any early return: with reduce_sum every process must join the reduction
            # and fold the same sums into its global prototypes
            sums = class_sufficient_statistics(
                pool_mu, pool_var, valid.classes, num_classes, self.reduce_sum
            )
            proto_mu, proto_var, _ = prototypes_from_sums(sums)
            if self.global_prototypes is not None:
                global_proto = prototypes_from_sums(
                    self.global_prototypes.fold(sums, keep=self.training)
                )
                if self.prototypes == "global":
                    proto_mu, proto_var, _ = global_proto
        counted = valid.counts.nonzero().squeeze(1)
        anchor_classes = anchors.counts.nonzero().squeeze(1)
        if counted.numel() < 2 or anchor_classes.numel() == 0:
            zero = mu.new_zeros(())
            self.statistics = ContrastiveStatistics(zero, zero)
            return 0 * (mu.sum() + var.sum())

        with torch.no_grad():
            pool_mu_hat = F.normalize(pool_mu, dim=1, out=pool_mu)  # negatives' pool, in place
            queries = anchor_classes[:, None].expand(-1, self.num_queries)
            anchor_ids = anchors.ids[anchors.draw(queries, generator)].reshape(-1)
            class_probs = negative_class_probs(
                proto_mu, proto_var, anchor_classes, counted, self.temperature
            )
            negative_cls = counted[torch.multinomial(
                class_probs, self.num_queries * self.num_negatives, replacement=True,
                generator=generator,
            )]
            negative_pos = valid.draw(negative_cls, generator).view(-1, self.num_negatives)
            positive_cls = queries.reshape(-1)
            positive_mu_hat = F.normalize(proto_mu, dim=1)[positive_cls]
            positive_var = proto_var.clamp_min(VAR_FLOOR)[positive_cls]
            if self.virtual_negatives:
                virtual_mu_hat, virtual_cls = self._virtual_negatives(global_proto, generator)

        # gathered from [B, D, hw] so that the gradients come back in mu's own layout
        anchor_image, anchor_pixel = anchor_ids // hw, anchor_ids % hw
        anchor_mu_hat = F.normalize(mu.flatten(2)[anchor_image, :, anchor_pixel], dim=1)
        anchor_var = var.flatten(2)[anchor_image, :, anchor_pixel].clamp_min(VAR_FLOOR)
        virtual_mls = None
        candidates = mu.new_full((), 1.0 + self.num_negatives)
        if self.virtual_negatives:
            own_class = positive_cls[:, None] == virtual_cls[None, :]
            virtual_mls = mls_to_points(anchor_mu_hat, anchor_var, virtual_mu_hat).masked_fill_(
                own_class, float("-inf"))
            candidates = candidates + (~own_class).sum(1)
        losses = mls_contrast_ce(
            anchor_mu_hat, anchor_var, positive_mu_hat, positive_var,
            pool_mu_hat, pool_var, negative_pos, self.temperature, virtual_mls,
        )
        with torch.no_grad():
            self.statistics = ContrastiveStatistics(
                candidates.log().mean(), losses.neg().exp().mean())
        return losses.sum() / (self.num_queries * counted.numel())

    def _virtual_negatives(self, global_proto, generator):
        """K draws from the GDP of every class it has seen: (normalised means ``[V, D]``, their
        classes ``[V]``), ``V = K x classes seen``."""
        proto_mu, proto_var, weight = global_proto
        seen = (weight > 0).nonzero().squeeze(1)
        draws = virtual_negatives(
            proto_mu[seen], proto_var[seen], self.virtual_negatives, self.virtual_radius,
            generator,
        )
        return F.normalize(draws.flatten(0, 1), dim=1), seen.repeat_interleave(
            self.virtual_negatives)
