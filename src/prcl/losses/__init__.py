"""Losses of PRCL (METHOD.md sections 3-7): one paper idea per function.

- ``mutual_likelihood_score``: similarity of two probabilistic representations (section 3).
- ``distribution_prototypes``: precision-weighted class prototypes (section 4, Eq. 7-8).
- ``PRCLLoss``: the contrastive loss with hard anchors and prototype-guided negatives
  (sections 5-6): batched sampling (``sampling``) and a blockwise cross-entropy over the MLS
  logits with an analytic gradient (``contrast``).
- ``pseudo_label_ce``: the unsupervised, confidence-weighted pseudo-label loss (section 7.7).
"""

from prcl.losses.mls import mutual_likelihood_score
from prcl.losses.prcl import PRCLLoss
from prcl.losses.prototypes import distribution_prototypes
from prcl.losses.pseudo_label import pseudo_label_ce

__all__ = ["PRCLLoss", "distribution_prototypes", "mutual_likelihood_score", "pseudo_label_ce"]
