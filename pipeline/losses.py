"""The two losses of the paper, vectorised (tests compare them with naive loops).

Shapes: b = batch size, h = representation dim, K = number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# The (b, b) Gram matrix is symmetric: from 2 blocks of this many rows on, only the blocks on
# and above the diagonal are multiplied (4 blocks: 10 of 16 products), the rest are copied.
# Worth it once b^2 h dominates (b = 1024, h = 512: ~10 ms per full product on one core).
_GRAM_BLOCK_ROWS = 128
_GRAM_MAX_BLOCKS = 4


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss, the paper's variant (PAPER.md, Definitions).

    ``features`` (b, h) already lie on the sphere (the caller projects them). For an anchor i
    with positives P(i) (other batch positions of its class; a sample drawn twice is its own
    positive),
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(<z_i,z_p>/tau) / sum_{a != i} exp(<z_i,z_a>/tau) ),
    and the batch loss is sum_i l_i / b: anchors without positives add 0 but count in b.

    Computed as sum_i l_i = sum_{i: P(i) nonempty} logsumexp_{a != i} <z_i,z_a>/tau
    - sum_c (|S_c|^2 - sum_{i in c} |z_i|^2) / (tau (n_c - 1)), with S_c the sum and n_c the
    count of class c's features in the batch: the positive term costs O(b h) and no (b, b)
    label mask is built. The backward pass is written out: one b^2 h product (autograd through
    ``z @ z.T`` needs two), and neither pass synchronises with the host.
    """
    if features.shape[0] < 2:  # no anchor has another sample: the loss is 0
        return (features * 0.0).sum()
    return _SupCon.apply(features, labels, float(temperature))


class _SupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
        b = z.shape[0]
        inv_tau = 1.0 / temperature
        logits = _scaled_gram(z, inv_tau)  # (b, b): <z_i, z_j> / tau
        sq_norm = logits.diagonal().clone()  # (b,): |z_i|^2 / tau
        # Each anchor's class as its segment [first, first + count) of the sorted labels: no
        # label is assumed < K, and no shape depends on the data (torch.unique would sync).
        sorted_labels = labels.sort().values
        first = torch.searchsorted(sorted_labels, labels)  # (b,)
        count = torch.searchsorted(sorted_labels, labels, right=True) - first  # n_{y_i}
        has_positive = count > 1
        count = count.to(z.dtype)
        weight = has_positive.to(z.dtype) / (count - 1.0).clamp(min=1.0)  # 1/|P(i)|, or 0
        class_sums = torch.zeros_like(z).index_add_(0, first, z)  # row first_i holds S_{y_i}
        class_sq = torch.linalg.vector_norm(class_sums, dim=1).square()  # (b,)
        # sum_i w_i <z_i, S_{y_i} - z_i> = sum_i (w_i / n_{y_i}) |S_{y_i}|^2 - sum_i w_i |z_i|^2
        positive_total = (weight / count * class_sq[first]).sum() * inv_tau - (
            weight * sq_norm
        ).sum()
        # log sum_{a != i} exp(logit_ia): the max of a softmax row is 1 / sum_a exp(logit_ia -
        # max_a logit_ia), so the log-denominator is max_a logit_ia - log(max_a softmax_ia).
        logits.fill_diagonal_(float("-inf"))
        softmax = torch.softmax(logits, dim=1)  # (b, b), diagonal 0; kept for backward
        log_denominator = logits.amax(dim=1) - softmax.amax(dim=1).log()  # (b,)
        total = torch.where(has_positive, log_denominator, 0.0).sum() - positive_total
        ctx.save_for_backward(z, softmax, class_sums, first, weight)
        ctx.inv_tau = inv_tau
        return total / b

    @staticmethod
    @once_differentiable  # the saved softmax carries no graph: refuse double backward
    def backward(ctx, grad: torch.Tensor):
        z, softmax, class_sums, first, weight = ctx.saved_tensors
        scale = grad * (ctx.inv_tau / z.shape[0])
        # d loss / d logit_ij = softmax_ij / b for anchors i with positives; logit_ij feeds
        # both z_i and z_j, hence one product with the symmetrised matrix. (A contiguous
        # transposed copy plus an add is several times faster than adding a strided transpose.)
        d_logits = softmax * (scale * (weight > 0))[:, None]  # (b, b)
        d_logits += d_logits.T.contiguous()
        d_z = d_logits @ z  # (b, b) @ (b, h) -> (b, h)
        # Positive term: d/dz_k of -w_c (|S_c|^2 - sum_{i in c} |z_i|^2) is -2 w_c (S_c - z_k).
        c = ((2.0 * scale) * weight)[:, None]  # (b, 1)
        d_z.addcmul_(z, c)
        d_z.addcmul_(class_sums.index_select(0, first), c, value=-1.0)
        return d_z, None, None


def _scaled_gram(z: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * z @ z.T, (b, h) -> (b, b); symmetric, so for large b each row block is
    multiplied only with itself and the blocks below it, and the transpose is copied."""
    b = z.shape[0]
    blocks = max(1, min(_GRAM_MAX_BLOCKS, b // _GRAM_BLOCK_ROWS))
    if blocks == 1:
        return (z @ z.T).mul_(scale)
    edges = [round(i * b / blocks) for i in range(blocks + 1)]
    out = torch.empty(b, b, dtype=z.dtype, device=z.device)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        block = torch.mm(z[lo:hi], z[lo:].T).mul_(scale)  # (hi - lo, b - lo)
        out[lo:hi, lo:] = block
        out[lo:, lo:hi] = block.T
    return out


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the bias-free head's logits (b, K), mean over the batch."""
    return F.cross_entropy(logits, labels)
