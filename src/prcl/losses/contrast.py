"""Per-anchor cross-entropy over MLS logits, without the ``[R, 1 + K, D]`` tensor.

docs/method.md section 6, step 4: every anchor r is scored against its positive and its K
negatives, ``logits = MLS(anchor, [positive, negatives]) / temperature``, and
``loss_r = CE(logits_r, target 0)``; the MLS of extra negatives (the virtual negatives of
section 8, ``[R, V]``) may join the same softmax. Materialising the pairs costs
``R x (1 + K) x D`` floats per intermediate (gigabytes at VOC scale). ``mls_contrast_ce``
walks over blocks of anchors that stay in cache, gathers each block's negatives by index,
and, since loss_r depends on anchor r alone, computes d loss_r / d anchor_r in the same pass
(analytic gradient), so the backward pass is a scaling. ``mls_contrast_ce_reference`` is the
plain version.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from prcl.losses.mls import mls_normalised

BLOCK_ELEMENTS = {"cpu": 1 << 21}
"""Elements of one ``[rows, K, D]`` block per device type; ``DEFAULT_BLOCK_ELEMENTS`` elsewhere.
CPU: 8 MiB of float32 (16 anchors at K = 512, D = 256). Measured at VOC scale on one thread:
2^19 to 2^22 equally fast, 2^23 30% slower (cache). Larger blocks mean fewer OpenMP parallel
regions, which matters on a busy machine (see benchmarks/loss.py)."""
DEFAULT_BLOCK_ELEMENTS = 1 << 26


def _block_rows(rows: int, per_row: int, device: torch.device) -> int:
    """Rows per block so that one ``[rows, K, D]`` block holds about ``BLOCK_ELEMENTS``."""
    budget = BLOCK_ELEMENTS.get(device.type, DEFAULT_BLOCK_ELEMENTS)
    return min(rows, max(1, budget // max(1, per_row)))


def _terms_and_grads(diff, var_sum, work):
    """Per-pair MLS pieces for ``diff = mû_b - mû_a`` and ``var_sum = s_a + s_b`` (``[..., D]``,
    overwritten).

    Returns ``sum_d(diff^2/S + log S)`` ``[...]`` and, when ``work`` (two spare buffers shaped
    like ``diff``) is given, the per-dimension derivative factors ``diff/S`` and
    ``1/S - diff^2/S^2``, from which ``dMLS/dmû_a = (diff/S) / D`` and
    ``dMLS/ds_a = -(1/S - diff^2/S^2) / (2D)``; without ``work`` those are ``None``.
    """
    if work is None:
        return diff.square_().div_(var_sum).add_(var_sum.log_()).sum(-1), None, None
    terms = torch.log(var_sum, out=work[0])
    inv = var_sum.reciprocal_()
    scaled = torch.mul(diff, inv, out=work[1])
    sums = terms.addcmul_(diff, scaled).sum(-1)
    return sums, scaled, torch.addcmul(inv, scaled, scaled, value=-1, out=diff)


def _block_loss(a, s, pos_mu_hat, pos_var, pool_mu_hat, pool_var, index, extra, work,
                temperature):
    """Per-anchor CE for one block of n anchors and, when ``work`` holds 4 buffers, its gradient.

    a, s, pos_mu_hat, pos_var: ``[n, D]``; pool_*: ``[P, D]``; index: ``[n, K]``; extra:
    ``[n, V]`` MLS of extra negatives or ``None``; work: ``[2 or 4, n, K, D]`` reusable
    buffers. Returns ``(loss [n], d loss/d mû_a [n, D], d loss/d s_a [n, D], d loss/d extra
    [n, V] or None)``, the gradients ``None`` with 2 buffers.
    """
    dim = a.shape[1]
    flat = index.reshape(-1)
    need_grad = work.shape[0] == 4
    neg = _terms_and_grads(
        torch.index_select(pool_mu_hat, 0, flat, out=work[0].view(-1, dim))
        .view_as(work[0]).sub_(a[:, None]),
        torch.index_select(pool_var, 0, flat, out=work[1].view(-1, dim))
        .view_as(work[1]).add_(s[:, None]),
        work[2:] if need_grad else None,
    )
    pos_work = torch.empty((2, *a.shape), dtype=a.dtype, device=a.device) if need_grad else None
    pos = _terms_and_grads(pos_mu_hat - a, pos_var + s, pos_work)
    logits = torch.cat([pos[0][:, None], neg[0]], dim=1).mul_(-0.5 / (dim * temperature))
    if extra is not None:
        logits = torch.cat([logits, extra / temperature], dim=1)
    log_norm = logits.logsumexp(1)
    loss = log_norm - logits[:, 0]
    if not need_grad:
        return loss, None, None, None
    weight = (logits - log_norm[:, None]).exp_()  # d loss / d MLS = (softmax - onehot(0)) / T
    weight[:, 0] -= 1
    weight /= temperature
    negatives = index.shape[1]
    neg_weight, pos_weight = weight[:, None, 1 : 1 + negatives], weight[:, :1]
    grad_mu_hat = (torch.bmm(neg_weight, neg[1]).squeeze(1) + pos_weight * pos[1]) / dim
    grad_var = (torch.bmm(neg_weight, neg[2]).squeeze(1) + pos_weight * pos[2]) * (-0.5 / dim)
    grad_extra = None if extra is None else weight[:, 1 + negatives :]
    return loss, grad_mu_hat, grad_var, grad_extra


class _MLSContrastCE(torch.autograd.Function):
    """Blockwise per-anchor CE; gradients to the anchors' mû and s only (see module doc)."""

    @staticmethod
    def forward(ctx, mu_hat, var, pos_mu_hat, pos_var, pool_mu_hat, pool_var, index, extra,
                temperature, need_grad):
        rows, dim = mu_hat.shape
        negatives = index.shape[1]
        step = _block_rows(rows, negatives * dim, mu_hat.device)
        # block buffers, reused: gathered means, gathered variances (+ two for the gradient)
        buffers = mu_hat.new_empty((4 if need_grad else 2, step, negatives, dim))
        losses = mu_hat.new_empty(rows)
        grad_mu_hat = torch.empty_like(mu_hat) if need_grad else None
        grad_var = torch.empty_like(var) if need_grad else None
        grad_extra = torch.empty_like(extra) if need_grad and extra is not None else None
        for start in range(0, rows, step):
            block = slice(start, start + step)
            n = index[block].shape[0]
            loss, block_grad_mu_hat, block_grad_var, block_grad_extra = _block_loss(
                mu_hat[block], var[block], pos_mu_hat[block], pos_var[block], pool_mu_hat,
                pool_var, index[block], None if extra is None else extra[block],
                buffers[:, :n], temperature,
            )
            losses[block] = loss
            if need_grad:
                grad_mu_hat[block] = block_grad_mu_hat
                grad_var[block] = block_grad_var
            if grad_extra is not None:
                grad_extra[block] = block_grad_extra
        ctx.save_for_backward(grad_mu_hat, grad_var, grad_extra)
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses):
        grad_mu_hat, grad_var, grad_extra = ctx.saved_tensors
        weight = grad_losses[:, None]
        extra = None if grad_extra is None else weight * grad_extra
        return (weight * grad_mu_hat, weight * grad_var, None, None, None, None, None, extra,
                None, None)


def mls_contrast_ce(
    mu_hat: torch.Tensor,
    var: torch.Tensor,
    pos_mu_hat: torch.Tensor,
    pos_var: torch.Tensor,
    pool_mu_hat: torch.Tensor,
    pool_var: torch.Tensor,
    negative_index: torch.Tensor,
    temperature: float,
    extra_mls: torch.Tensor | None = None,
) -> torch.Tensor:
    """``CE(MLS(a_r, [positive_r, pool[negative_index[r]]]) / temperature, 0)`` for each anchor r,
    with ``extra_mls[r]`` (already scores) appended to its logits when given.

    Memory: ``O(R x (K + V + D))`` plus one block, never ``O(R x K x D)``. Gradients flow into
    ``mu_hat``, ``var`` and ``extra_mls`` (positives and the pool are constants, detached).

    Args:
        mu_hat: ``[R, D]`` L2-normalised anchor means.
        var: ``[R, D]`` anchor variances, already floored (``VAR_FLOOR``).
        pos_mu_hat, pos_var: ``[R, D]`` each anchor's positive (normalised mean, variance).
        pool_mu_hat, pool_var: ``[P, D]`` candidate negatives (normalised means, variances).
        negative_index: ``[R, K]`` int64 rows of the pool that are anchor r's negatives.
        temperature: divides every MLS.
        extra_mls: ``[R, V]`` MLS of each anchor to extra negatives (``-inf`` where one does
            not count for that anchor), or ``None``.

    Returns:
        ``[R]`` cross-entropy of each anchor, in the dtype of ``mu_hat``.
    """
    inputs = (mu_hat, var) if extra_mls is None else (mu_hat, var, extra_mls)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    return _MLSContrastCE.apply(
        mu_hat, var, pos_mu_hat.detach(), pos_var.detach(), pool_mu_hat.detach(),
        pool_var.detach(), negative_index.contiguous(), extra_mls, temperature, need_grad,
    )


def mls_contrast_ce_reference(
    mu_hat: torch.Tensor,
    var: torch.Tensor,
    pos_mu_hat: torch.Tensor,
    pos_var: torch.Tensor,
    pool_mu_hat: torch.Tensor,
    pool_var: torch.Tensor,
    negative_index: torch.Tensor,
    temperature: float,
    extra_mls: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same as ``mls_contrast_ce`` by materialising ``[R, 1 + K, D]`` (small inputs, tests)."""
    cand_mu_hat = torch.cat([pos_mu_hat[:, None], pool_mu_hat[negative_index]], 1).detach()
    cand_var = torch.cat([pos_var[:, None], pool_var[negative_index]], 1).detach()
    logits = mls_normalised(mu_hat[:, None], cand_mu_hat, var[:, None], cand_var)
    if extra_mls is not None:
        logits = torch.cat([logits, extra_mls], 1)
    logits = logits / temperature
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction="none")
