"""Schedules of docs/method.md sections 7.8-7.9: the ramp-down of lambda_c and the poly lr."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def ramp_down(epoch: int, max_value: float, min_value: float, ramp_mult: float,
              max_epoch: int) -> float:
    """lambda_c = max_value * exp(ramp_mult * (epoch / max_epoch)^2), clipped below at
    min_value [1.0, 0, -5, 200]: the contrastive weight decays as training goes on."""
    progress = min(epoch / max_epoch, 1.0)
    return max(max_value * math.exp(ramp_mult * progress**2), min_value)


def poly_lr(optimizer: Optimizer, total_steps: int, power: float = 0.9,
            min_lr: float = 1e-6, lr_warmup_steps: int = 0) -> LambdaLR:
    """lr_t = max(lr_0 * w_t * (1 - t / total_steps)^power, min_lr) for each parameter group,
    stepped once per optimiser step (docs/method.md 7.9). w_t = min(1, (t + 1) / lr_warmup_steps) is
    a linear warm-up (1 throughout without one, the authors' schedule)."""
    base = [group["lr"] for group in optimizer.param_groups]

    def factor(base_lr: float):
        def f(step: int) -> float:
            decayed = (1.0 - min(step, total_steps) / total_steps) ** power
            if lr_warmup_steps:
                decayed *= min(1.0, (step + 1) / lr_warmup_steps)
            return max(decayed, min_lr / base_lr) if base_lr > 0 else 0.0
        return f

    return LambdaLR(optimizer, [factor(b) for b in base])
