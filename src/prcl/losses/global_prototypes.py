"""Global distribution prototypes (GDP), from PRCL's 2024 extension (docs/method.md section 8).

A class's prototype gathers the probabilistic representations of the whole run instead of
one batch: every step's packed precision-weighted sums (``class_sufficient_statistics``,
already summed over processes) are folded into running sums whose weight decays by a
forgetting factor. ``GlobalPrototypes`` holds those sums for a run (checkpointed with it).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from prcl.losses.prototypes import prototypes_from_sums


@torch.no_grad()
def global_distribution_prototypes(
    previous: torch.Tensor | None, batch: torch.Tensor, forgetting: float
) -> torch.Tensor:
    """One GDP step: fold a batch's per-class sums into the running ones.

    Per class c and dimension, with gamma = ``forgetting``::

        L_c <- gamma * L_c + sum_{i in V_c} 1/s_i        (accumulated precision)
        M_c <- gamma * M_c + sum_{i in V_c} mu_i/s_i     (precision-weighted means)
        n_c <- gamma * n_c + |V_c|                       (pixel weight: "seen" if > 0)
        s_c = 1 / L_c,   mu_c = M_c / L_c                (``prototypes_from_sums``)

    i.e. the product of the Gaussians of every pixel seen so far, a pixel seen t steps ago
    with its precision scaled by gamma^t. The old precision decays before the batch's is
    added, so under a steady stream of precision P per step the variance settles at
    (1 - gamma) / P instead of shrinking to 0 (gamma = 1, the authors' code), and the
    representations of an untrained network fade. gamma = 0 gives the batch prototypes
    exactly. A class never seen has n_c = 0 and no prototype. Rows of ``batch`` that are not
    finite (a diverging step) are folded as if the class were absent, so one bad step cannot
    poison the state for good. No gradient.

    Args:
        previous: ``[C, 2D + 1]`` running sums, or ``None`` before the first batch.
        batch: ``[C, 2D + 1]`` this step's sums (1/s, mu/s, count), summed over processes.
        forgetting: gamma in [0, 1].

    Returns:
        ``[C, 2D + 1]`` the new running sums (a new tensor), in ``batch``'s dtype and device.
    """
    batch = torch.where(torch.isfinite(batch).all(1, keepdim=True), batch, 0.0)
    if previous is None:
        return batch
    return previous.to(batch).mul(forgetting).add_(batch)


class GlobalPrototypes:
    """The GDP state of a run: running sums ``[C, 2D + 1]`` (``None`` until the first batch).

    Every rank folds the same all-reduced sums, so every rank holds the same state.
    ``state_dict``/``load_state_dict`` carry it through checkpoints (resume stays exact).
    """

    def __init__(self, forgetting: float) -> None:
        self.forgetting = forgetting
        self.sums: torch.Tensor | None = None

    def fold(self, batch: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """``global_distribution_prototypes(state, batch)``, stored as the state if ``keep``."""
        sums = global_distribution_prototypes(self.sums, batch, self.forgetting)
        if keep:
            self.sums = sums
        return sums

    def summary(self) -> dict[str, float]:
        """For the run log: ``gdp_classes_seen`` and ``gdp_mean_var`` (the variance averaged
        over the dimensions of the classes seen); empty before the first batch."""
        if self.sums is None:
            return {}
        _, var, counts = prototypes_from_sums(self.sums)
        seen = counts > 0
        mean_var = var[seen].mean().item() if seen.any() else math.nan
        return {"gdp_classes_seen": int(seen.sum()), "gdp_mean_var": mean_var}

    def state_dict(self) -> dict[str, Any]:
        return {"sums": None if self.sums is None else self.sums.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"]
