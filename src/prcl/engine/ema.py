"""The mean teacher (METHOD.md section 7.1)."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(step: int, alpha: float) -> float:
    """decay = min(1 - 1 / (step + 1), alpha): the teacher follows the student closely at
    first and settles at ``alpha`` [0.99]."""
    return min(1.0 - 1.0 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, alpha: float,
               buffers: bool = False) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, over parameters, after each
    optimiser step. BatchNorm statistics are not averaged: the teacher gathers its own while
    it makes pseudo-labels in train mode, as in the authors' code. With ``buffers`` (the
    labelled warm-up, when the teacher sees no images) they are averaged the same way."""
    weight = 1.0 - ema_decay(step, alpha)
    pairs = zip(teacher.parameters(), student.parameters(), strict=True)
    if buffers:
        floating = [(t, s) for t, s in zip(teacher.buffers(), student.buffers(), strict=True)
                    if t.is_floating_point()]
        pairs = [*pairs, *floating]
    for t, s in pairs:
        t.lerp_(s.detach(), weight)
