"""The mean teacher (docs/method.md section 7.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

TEACHER_UNRUN = ("representation", "probability_head")
"""The student's heads that the teacher never runs while training (it makes pseudo-labels
from the classifier alone): their BatchNorm statistics come to the teacher by the EMA."""


def ema_decay(step: int, alpha: float) -> float:
    """decay = min(1 - 1 / (step + 1), alpha): the teacher follows the student closely at
    first and settles at ``alpha`` [0.99]."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, alpha: float,
               buffers: Sequence[str] = (), skip: Tensor | None = None) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, over parameters, after each
    optimiser step; one foreach call per dtype.

    ``skip`` (``[]`` float32 on the device, 1.0 for a step the non-finite guard skipped,
    ``prcl.engine.guard``) leaves the teacher exactly as it was without a host read: the
    update is then ``skip_blend_``'s four foreach calls per dtype instead of one.

    BatchNorm statistics are the teacher's own where it makes pseudo-labels in train mode, as
    in the authors' code. ``buffers`` names submodules whose floating buffers are averaged the
    same way: those the teacher never runs (``TEACHER_UNRUN``), and ``""`` (the whole
    network) during the labelled warm-up, when the teacher sees no images, and throughout
    with ``train.teacher_batchnorm=student``, when it makes pseudo-labels in eval mode."""
    weight = 1.0 - ema_decay(step, alpha)
    pairs = list(zip(teacher.parameters(), student.parameters(), strict=True))
    for name in buffers:
        together = zip(teacher.get_submodule(name).buffers(),
                       student.get_submodule(name).buffers(), strict=True)
        pairs += [(t, s) for t, s in together if t.is_floating_point()]
    by_dtype: dict[torch.dtype, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for t, s in pairs:
        targets, sources = by_dtype.setdefault(t.dtype, ([], []))
        targets.append(t)
        sources.append(s)  # under no_grad: no detach (one dispatch) per tensor
    for targets, sources in by_dtype.values():
        if skip is None:
            torch._foreach_lerp_(targets, sources, weight)
        else:
            skip_blend_(targets, torch._foreach_lerp(targets, sources, weight), skip)


def skip_blend_(targets: list[Tensor], updated: list[Tensor], skip: Tensor) -> None:
    """targets <- updated * (1 - skip) + targets * skip for ``skip`` in {0, 1} (``[]``):
    exactly ``updated`` or exactly ``targets`` (a product with 1 or 0 and a sum with 0 are
    exact), decided on the device. ``updated`` is overwritten."""
    torch._foreach_mul_(updated, 1 - skip)
    torch._foreach_mul_(targets, skip)
    torch._foreach_add_(targets, updated)
