"""The losses of one training step (docs/method.md section 7), top to bottom like the method.

``prcl_step_losses`` is the semi-supervised step: the teacher's pseudo-labels, the batched
unlabelled pipeline, the student on both batches, and the three losses (two for the mean
teacher alone, ``train.method=mean_teacher``). ``supervised_step_losses`` is the
labelled-only baseline and the labelled warm-up. The optimiser side
(backward, the two optimisers, the EMA) lives in the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prcl.config import Config, LossConfig
from prcl.data import IGNORE_INDEX, normalize, strong_augment
from prcl.losses import PRCLLoss, pseudo_label_ce
from prcl.losses.prototypes import ReduceSum

Partners = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class StepLosses(NamedTuple):
    """One step's losses and what the logs say of the contrastive term, ``[]`` device tensors.

    ``contrastive_chance`` and ``positive_probability`` are the PRCL loss's
    ``ContrastiveStatistics``, ``mean_variance`` the mean sigma^2 over the student's batch;
    all three are 0 in a step without the contrastive term."""

    total: Tensor
    supervised: Tensor
    unsupervised: Tensor
    contrastive: Tensor
    contrastive_chance: Tensor
    positive_probability: Tensor
    mean_variance: Tensor


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, align_corners=True, as the authors bring logits to label size."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def teacher_pseudo_labels(teacher: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """docs/method.md 7.2: the teacher predicts the raw unlabelled batch [B, 3, H, W]; at image
    size, the softmax's argmax is the pseudo-label [B, H, W] and its max the confidence."""
    logits = teacher(normalize(images), representation=False).logits
    confidence, pseudo_labels = upsample(logits.float(), images.shape[-2:]).softmax(1).max(1)
    return pseudo_labels, confidence


@torch.no_grad()
def contrastive_labels(
    labels: Tensor, pseudo_labels: Tensor, confidence: Tensor, weak_threshold: float,
    size: tuple[int, int],
) -> Tensor:
    """docs/method.md section 5, which pixels take part, at the representation's resolution:
    labelled pixels whose ground truth is not ignored, unlabelled pixels whose pseudo-label
    confidence is >= weak_threshold; labels brought down by nearest neighbour.

    labels [B_l, H, W], pseudo_labels and confidence [B_u, H, W] -> [B_l + B_u, h, w], the
    class of each taking part and -1 elsewhere."""
    confident = confidence >= weak_threshold
    unlabelled = torch.where(confident & (pseudo_labels != IGNORE_INDEX), pseudo_labels, -1)
    labelled = torch.where(labels == IGNORE_INDEX, -1, labels)
    both = torch.cat([labelled, unlabelled]).unsqueeze(1).float()
    return F.interpolate(both, size=size, mode="nearest").squeeze(1).long()


def student_outputs(
    student: nn.Module, images_l: Tensor, images_u: Tensor, student_pass: str,
    representation: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """docs/method.md 7.6: the student on the labelled batch images_l [B_l, 3, H, W] and
    the augmented unlabelled batch images_u [B_u, 3, H, W] -> logits, mu and var, each
    [B_l + B_u, ., h, w], the labelled images first; mu and var are None without
    ``representation`` (the mean teacher alone).

    ``"separate"`` (the authors'): one pass per batch, so every BatchNorm normalises each
    batch over itself. ``"joint"``: one pass over both batches, BatchNorm over both (U2PL,
    UniMatch): the convolutions in half the kernel launches."""
    if student_pass == "joint":
        out = student(normalize(torch.cat([images_l, images_u])), representation)
        return out.logits, out.mu, out.var
    outs = student(normalize(images_l), representation), student(normalize(images_u),
                                                                 representation)
    return tuple(None if a is None else torch.cat([a, b])
                 for a, b in zip(outs[0][:3], outs[1][:3], strict=True))


def prcl_loss_from_config(cfg: LossConfig, reduce_sum: ReduceSum | None = None) -> PRCLLoss:
    """The PRCL loss of sections 5-6 (and the section 8 options) that ``cfg`` describes."""
    return PRCLLoss(
        cfg.num_queries, cfg.num_negatives, cfg.temperature, cfg.strong_threshold, reduce_sum,
        cfg.prototypes, cfg.gdp_forgetting, cfg.virtual_negatives, cfg.virtual_radius,
    )


def prcl_step_losses(
    student: nn.Module,
    teacher: nn.Module,
    images_l: Tensor,
    labels_l: Tensor,
    images_u: Tensor,
    cfg: Config,
    prcl_loss: PRCLLoss | None,
    lambda_c: float,
    generator: torch.Generator,
    autocast: AbstractContextManager,
    partners: Partners | None = None,
) -> StepLosses:
    """One semi-supervised step's losses (docs/method.md 7.2-7.7).

    images_l [B_l, 3, H, W] and labels_l [B_l, H, W]: the labelled batch after its pipeline;
    images_u [B_u, 3, H, W]: the raw unlabelled batch. ``partners`` (several processes) maps
    the local unlabelled batch to each image's class-mix partner from the gathered batch.
    ``prcl_loss`` None is the mean teacher alone: the same step without the representation
    heads and the contrastive term, which are then skipped, not weighted by 0."""
    data = cfg.data
    with autocast:
        pseudo_labels, confidence = teacher_pseudo_labels(teacher, images_u)
    images_u, pseudo_labels, confidence = strong_augment(
        images_u, pseudo_labels, confidence, data.crop_size, data.scale_range, data.mix_mode,
        generator, partners,
    )

    with autocast:
        logits, mu, var = student_outputs(student, images_l, images_u, cfg.train.student_pass,
                                          representation=prcl_loss is not None)

    labelled = len(images_l)
    supervised = labelled_ce(logits[:labelled], labels_l)
    unsupervised = pseudo_label_ce(
        upsample(logits[labelled:].float(), pseudo_labels.shape[-2:]), pseudo_labels,
        confidence, cfg.loss.un_threshold, cfg.loss.unsupervised_weighting,
    )
    if prcl_loss is None:
        zero = supervised.detach() * 0
        return StepLosses(supervised + unsupervised, supervised, unsupervised, zero, zero, zero,
                          zero)
    taking_part = contrastive_labels(
        labels_l, pseudo_labels, confidence, cfg.loss.weak_threshold, logits.shape[-2:]
    )
    contrastive = prcl_loss(mu, var, taking_part, logits.detach().float().softmax(1), generator)
    total = supervised + unsupervised + lambda_c * contrastive
    return StepLosses(total, supervised, unsupervised, contrastive, *prcl_loss.statistics,
                      var.detach().float().mean())


def supervised_step_losses(
    student: nn.Module, images_l: Tensor, labels_l: Tensor, autocast: AbstractContextManager
) -> StepLosses:
    """The labelled-only baseline: cross-entropy on the labelled batch, nothing else. PRCL's
    labelled warm-up (``train.labelled_warmup_epochs``) is this same step, so a warm-up
    follows the baseline's run exactly until the unlabelled batch joins."""
    with autocast:
        out = student(normalize(images_l), representation=False)
    supervised = labelled_ce(out.logits, labels_l)
    zero = supervised.detach() * 0
    return StepLosses(supervised, supervised, zero, zero, zero, zero, zero)


def labelled_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """docs/method.md 7.7's supervised loss: cross-entropy of logits [B, C, h, w], brought to the
    size of labels [B, H, W], over the labelled pixels (255 ignored)."""
    logits = upsample(logits.float(), labels.shape[-2:])
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
