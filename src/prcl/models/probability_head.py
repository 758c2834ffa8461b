"""The probability head: a per-pixel, per-dimension variance sigma^2 (docs/method.md section 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VARIANCE_FLOOR = 1e-6
"""The authors' ``sigmoid(log(exp(x) + 1e-6))``: the floor inside the sigmoid."""


class ProbabilityHead(nn.Module):
    """sigma^2 = sigmoid(log(exp(gamma * BN(W2 ReLU(BN(W1 f))) + beta) + 1e-6)), in (0, 1).

    W1 [D, C_in] and W2 [D, D] are bias-free linear maps applied per pixel whose rows are
    L2-normalised at every forward; the first BN is affine, the second is not; gamma (init 1)
    and beta (init 0) are learnable scalars. ``forward(feature [B, C_in, h, w]) -> var
    [B, D, h, w]``. The head trains with its own optimiser and a much smaller learning rate.
    Parameter names match the authors' ``uncer_head`` so their checkpoints load directly.
    """

    def __init__(self, in_channels: int = 304, dim: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Parameter(torch.empty(dim, in_channels))
        self.bn1 = nn.BatchNorm2d(dim, affine=True)
        self.fc2 = nn.Parameter(torch.empty(dim, dim))
        self.bn2 = nn.BatchNorm2d(dim, affine=False)
        self.gamma = nn.Parameter(torch.ones(1))
        self.beta = nn.Parameter(torch.zeros(1))
        nn.init.kaiming_normal_(self.fc1)
        nn.init.kaiming_normal_(self.fc2)

    def forward(self, feature: Tensor) -> Tensor:
        x = F.conv2d(feature, F.normalize(self.fc1, dim=1)[:, :, None, None])
        x = F.relu(self.bn1(x))
        x = self.bn2(F.conv2d(x, F.normalize(self.fc2, dim=1)[:, :, None, None]))
        x = self.gamma * x + self.beta
        return torch.sigmoid(torch.logaddexp(x, torch.full_like(x, math.log(VARIANCE_FLOOR))))
