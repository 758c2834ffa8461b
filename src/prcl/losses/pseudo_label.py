"""Unsupervised loss on the teacher's pseudo-labels (docs/method.md section 7.7)."""

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def pseudo_label_ce(
    logits: torch.Tensor,
    pseudo_labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float = 0.97,
    weighting: str = "image",
) -> torch.Tensor:
    """Confidence-weighted cross-entropy of the student on pseudo-labels (section 7.7).

    Per-pixel CE (``ignore_index=255``). ``weighting="image"`` (the authors'): weighted per
    image by ``w_b = #(confidence >= threshold) / #(pixels whose pseudo-label is not
    ignored)`` (0 for an image without such a pixel), averaged over the pixels whose CE is
    positive. ``weighting="pixel"`` (FixMatch's mask): the mean CE over the pixels whose
    confidence is >= threshold, the others left out. Without any such pixel the result is a
    zero that stays in the graph; never NaN. Computed in float32 with autocast disabled.

    Args:
        logits: ``[B, C, H, W]`` student logits.
        pseudo_labels: ``[B, H, W]`` int64 teacher argmax, 255 where ignored.
        confidence: ``[B, H, W]`` teacher max probability in [0, 1].
        threshold: un_threshold [0.97].
        weighting: ``"image"`` or ``"pixel"``.

    Returns:
        ``[]`` scalar loss.
    """
    if weighting not in ("image", "pixel"):
        raise ValueError(f"weighting '{weighting}': choose 'image' or 'pixel'")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        ce = F.cross_entropy(
            logits.float(), pseudo_labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        if weighting == "pixel":
            confident = (confidence >= threshold) & (pseudo_labels != IGNORE_INDEX)
            return torch.where(confident, ce, 0.0).sum() / confident.sum().clamp_min(1)
        num_valid = (pseudo_labels != IGNORE_INDEX).flatten(1).sum(1)
        num_confident = (confidence >= threshold).flatten(1).sum(1)
        weight = num_confident / num_valid.clamp_min(1)
        positive = ce > 0
        weighted = torch.where(positive, weight[:, None, None] * ce, 0.0)
        return weighted.sum() / positive.sum().clamp_min(1)
