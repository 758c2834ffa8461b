"""Losses of PRCL (docs/method.md sections 3-8): one paper idea per function.

- ``mutual_likelihood_score``: similarity of two probabilistic representations (section 3).
- ``distribution_prototypes``: precision-weighted class prototypes (section 4, Eq. 7-8).
- ``PRCLLoss``: the contrastive loss with hard anchors and prototype-guided negatives
  (sections 5-6): batched sampling (``sampling``) and a blockwise cross-entropy over the MLS
  logits with an analytic gradient (``contrast``).
- ``global_distribution_prototypes``: the 2024 extension's prototypes gathered over the whole
  run with a forgetting factor (section 8); ``GlobalPrototypes`` holds them for a run.
- ``virtual_negatives``: the 2024 extension's negatives drawn from the other classes' global
  prototypes (section 8), scored by ``mls_to_points``.
- ``pseudo_label_ce``: the unsupervised, confidence-weighted pseudo-label loss (section 7.7).
"""

from prcl.losses.global_prototypes import GlobalPrototypes, global_distribution_prototypes
from prcl.losses.mls import mls_to_points, mutual_likelihood_score
from prcl.losses.prcl import PRCLLoss
from prcl.losses.prototypes import distribution_prototypes
from prcl.losses.pseudo_label import pseudo_label_ce
from prcl.losses.sampling import virtual_negatives

__all__ = [
    "GlobalPrototypes",
    "PRCLLoss",
    "distribution_prototypes",
    "global_distribution_prototypes",
    "mls_to_points",
    "mutual_likelihood_score",
    "pseudo_label_ce",
    "virtual_negatives",
]
