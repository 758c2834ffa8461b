"""The PRCL loss: probabilistic representation contrastive learning (METHOD.md sections 5-6).

Vectorised over classes, queries and negatives: the anchors and negatives of every class are
drawn in one batched call each (``prcl.losses.sampling``), and the cross-entropy over the
``[R, 1 + K, D]`` MLS logits is evaluated blockwise by ``mls_contrast_ce``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from prcl.losses.contrast import mls_contrast_ce
from prcl.losses.mls import VAR_FLOOR
from prcl.losses.prototypes import ReduceSum, distribution_prototypes
from prcl.losses.sampling import negative_class_probs, participating_pixels


class PRCLLoss(nn.Module):
    """Probabilistic representation contrastive loss (METHOD.md sections 5-6; no parameters).

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

    Computed in float32 with autocast disabled. Sampling uses ``torch.rand`` and
    ``torch.multinomial`` on the inputs' device with ``generator``, whose device must be
    ``mu.device`` (``None``: that device's default generator); same generator state, same loss.

    Args:
        num_queries: anchors per class [256].
        num_negatives: negatives per anchor [512].
        temperature: divides every MLS, in the logits and the negative-class softmax [100].
        strong_threshold: anchors are valid pixels whose own-class probability is below it [0.8].
        reduce_sum: sums the prototype statistics over processes (see
            ``distribution_prototypes``); anchors and negatives stay local.
    """

    def __init__(
        self,
        num_queries: int = 256,
        num_negatives: int = 512,
        temperature: float = 100.0,
        strong_threshold: float = 0.8,
        reduce_sum: ReduceSum | None = None,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.strong_threshold = strong_threshold
        self.reduce_sum = reduce_sum

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
        """``forward`` in float32; the steps follow METHOD.md sections 5, 4 and 6.1-6.4."""
        num_classes = probs.shape[1]
        valid, anchors = participating_pixels(labels, probs, self.strong_threshold)
        mu_pix, var_pix = mu.flatten(2).transpose(1, 2), var.flatten(2).transpose(1, 2)
        hw = mu_pix.shape[1]
        image, pixel = valid.ids // hw, valid.ids % hw
        with torch.no_grad():
            pool_mu = mu_pix[image, pixel]
            pool_var = var_pix[image, pixel].clamp_min_(VAR_FLOOR)
            # before any early return: with reduce_sum every process must join the reduction
            proto_mu, proto_var, _ = distribution_prototypes(
                pool_mu, pool_var, valid.classes, num_classes, self.reduce_sum
            )
        counted = valid.counts.nonzero().squeeze(1)
        anchor_classes = anchors.counts.nonzero().squeeze(1)
        if counted.numel() < 2 or anchor_classes.numel() == 0:
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

        # gathered from [B, D, hw] so that the gradients come back in mu's own layout
        anchor_image, anchor_pixel = anchor_ids // hw, anchor_ids % hw
        anchor_mu_hat = F.normalize(mu.flatten(2)[anchor_image, :, anchor_pixel], dim=1)
        anchor_var = var.flatten(2)[anchor_image, :, anchor_pixel].clamp_min(VAR_FLOOR)
        losses = mls_contrast_ce(
            anchor_mu_hat, anchor_var, positive_mu_hat, positive_var,
            pool_mu_hat, pool_var, negative_pos, self.temperature,
        )
        return losses.sum() / (self.num_queries * counted.numel())
