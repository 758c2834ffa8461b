"""The non-finite guard, decided on the device (docs/method.md section 7, the optimiser side).

A step whose loss is not finite (or above ``MAX_LOSS``) or whose gradients are not finite
is skipped: the parameters, the momentum buffers and the teacher stay exactly as they were.
Reading a loss or a gradient norm on the host would wait for the GPU on every step, so the
decision is a float flag on the device, ``skip`` (``[]``, 1.0 = skip): the fused SGD step
honours it as its ``found_inf`` (as it does for ``GradScaler``), the EMA blends by it, and
the counters of skipped steps live on the device too, read only when the trainer logs,
evaluates or saves (``SkipCounters.read``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

MAX_LOSS = 1e4
"""A finite loss above this is divergence: cross-entropies of a working network stay within
a few tens and the PRCL loss near ln(1 + num_negatives); an exploding one passes 1e4 steps
before its weights turn into NaN."""

ReduceMax = Callable[[Tensor], Tensor]
"""Takes the maximum of a tensor over processes, in place (an all-reduce)."""


def loss_skip_flag(loss: Tensor, reduce_max: ReduceMax | None = None) -> Tensor:
    """``[]`` float32 on the loss's device: 1.0 when ``loss`` (``[]``) is NaN, infinite or
    at least ``MAX_LOSS`` in magnitude on any process (``reduce_max``), else 0.0. No host
    read: ``|NaN| < MAX_LOSS`` is false, so one comparison covers the three cases."""
    flag = loss.detach().abs().lt(MAX_LOSS).logical_not().float()
    if reduce_max is not None:
        reduce_max(flag)
    return flag


def flag_nonfinite_gradients_(grads: list[Tensor], skip: Tensor, one: Tensor) -> None:
    """Set ``skip`` (``[]`` float32) to 1.0 when any of ``grads`` holds a NaN or an infinity:
    one foreach kernel per device and dtype, the check ``GradScaler`` runs (its unscaling by
    ``one``, a ``[]`` float32 1.0, leaves every gradient as it is)."""
    if grads:
        torch._amp_foreach_non_finite_check_and_unscale_(grads, skip, one)


@contextmanager
def found_inf(optimizers: list[torch.optim.Optimizer], skip: Tensor):
    """While inside, the fused optimisers' ``step()`` does nothing on the device when
    ``skip`` is 1.0 (their ``found_inf`` argument, as ``GradScaler`` passes it)."""
    for optimizer in optimizers:
        optimizer.found_inf = skip
    try:
        yield
    finally:
        for optimizer in optimizers:
            del optimizer.found_inf


def zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter of an SGD with momentum a zero momentum buffer before the first
    step (other optimisers: nothing to do). The fused SGD starts an absent buffer as
    ``empty_like`` and fills it only if that step runs, so a skipped first step would leave
    garbage; from zero, the first step's buffer is ``momentum * 0 + grad = grad``, the value
    it would have started with."""
    for group in optimizer.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p))


class SkipCounts(NamedTuple):
    skipped: int
    """Steps skipped in the whole run."""
    streak: int
    """Consecutive skipped steps up to the last step."""
    worst_streak: int
    """The longest such run since the counters were last read."""


class SkipCounters:
    """The skipped steps of a run, counted on the device (``[]`` float32 each; exact up to
    2^24 steps). ``update(skip)`` costs four tiny kernels and no host read; ``read()`` is the
    one host read. ``worst_streak`` keeps a run of skipped steps long enough to stop training
    visible to the next check even when good steps followed it; ``restart_worst`` after a
    check."""

    def __init__(self, device: torch.device, skipped: int = 0, streak: int = 0) -> None:
        self.skipped = torch.tensor(float(skipped), device=device)
        self.streak = torch.tensor(float(streak), device=device)
        self.worst_streak = self.streak.clone()

    def update(self, skip: Tensor) -> None:
        """Count one step; ``skip``: ``[]`` float32, 1.0 for a skipped step."""
        self.skipped.add_(skip)
        self.streak.add_(1).mul_(skip)
        torch.maximum(self.worst_streak, self.streak, out=self.worst_streak)

    def read(self) -> SkipCounts:
        """The counts on the host (one transfer)."""
        skipped, streak, worst = torch.stack(
            [self.skipped, self.streak, self.worst_streak]).tolist()
        return SkipCounts(int(skipped), int(streak), int(worst))

    def restart_worst(self) -> None:
        """``worst_streak`` starts again from the current streak."""
        self.worst_streak.copy_(self.streak)
