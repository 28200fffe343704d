"""The two losses of the paper, vectorised (tests compare them with naive loops).

Shapes: b = batch size, h = representation dim, K = number of classes.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from pipeline.maths import products

# The (b, b) Gram matrix is symmetric. On the CPU it is built from row blocks of this many rows,
# each multiplied only with itself and the rows below it (b = 1024: 16 blocks, 136 of 256 block
# products), and the lower triangle is copied. The products saved scale with b^2 h, the copies
# with b^2: below h = 128 the copies cost more (one core: b = 512, h = 64: 354 us blocked
# against 304 us whole; h = 512: 1589 against 2367). Smaller blocks lose more to the BLAS call.
_GRAM_BLOCK_ROWS = 64
_GRAM_MAX_BLOCKS = 32
_GRAM_MIN_DIM = 128


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss, the paper's variant (docs/paper.md, Definitions).

    ``features`` (b, h) already lie on the sphere (the caller projects them). For an anchor i
    with positives P(i) (other batch positions of its class; a sample drawn twice is its own
    positive),
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(<z_i,z_p>/tau) / sum_{a != i} exp(<z_i,z_a>/tau) ),
    and the batch loss is sum_i l_i / b: anchors without positives add 0 but count in b.

    Computed as sum_i l_i = sum_{i: P(i) nonempty} logsumexp_{a != i} <z_i,z_a>/tau
    - sum_i <z_i, S_{y_i} - z_i> / (tau |P(i)|), with S_c the sum of class c's features in the
    batch: the positive term costs O(b h) and no (b, b) label mask is built. The backward pass
    is written out: one b^2 h product (autograd through ``z @ z.T`` needs two), and neither
    pass synchronises with the host.
    """
    if features.shape[0] < 2:  # no anchor has another sample: the loss is 0
        return (features * 0.0).sum()
    return _SupCon.apply(features, labels, float(temperature))


def multiview_supcon_loss(views: torch.Tensor, labels: torch.Tensor,
                          temperature: float) -> torch.Tensor:
    """Multi-view supcon (Khosla et al. 2020): ``views`` (v, b, h) on the sphere, view u of
    sampled image j at ``views[u, j]``, ``labels`` (b,) the images' labels.

    Every one of the v b views is an anchor; its positives are all other views of its class
    (the other views of its own image included), its denominator runs over all other views:
    exactly :func:`supcon_loss` on the (v b, h) batch of views with the labels repeated v
    times, normalised by v b. That is the whole definition, so it is computed that way.
    """
    v, b, h = views.shape
    if labels.shape != (b,):
        raise ValueError(f"multiview supcon: labels have shape {tuple(labels.shape)}, the "
                         f"views {tuple(views.shape)} need ({b},)")
    return supcon_loss(views.reshape(v * b, h), labels.repeat(v), temperature)


class _SupCon(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
        inv_tau = 1.0 / temperature
        logits = _scaled_gram(z, inv_tau)  # (b, b): <z_i, z_j> / tau
        # Each anchor's class as its segment [first, last) of the sorted labels: no label is
        # assumed < K, and no shape depends on the data (torch.unique would sync).
        sorted_labels = labels.sort().values
        first = torch.searchsorted(sorted_labels, labels)  # (b,)
        num_positives = torch.searchsorted(sorted_labels, labels, right=True).sub_(first).sub_(1)
        has_positive = num_positives > 0
        weight = has_positive.to(z.dtype).div_(num_positives.clamp(min=1))  # 1/|P(i)|, or 0
        # Row first_i of class_sums holds S_{y_i}; positives_i = sum_{p in P(i)} z_p, weighted.
        class_sums = torch.zeros_like(z).index_add_(0, first, z)
        weighted_positives = class_sums.index_select(0, first).sub_(z).mul_(weight[:, None])
        positive_total = products.dot(weighted_positives, z)  # times tau
        # log sum_{a != i} exp(logit_ia): the max of a softmax row is 1 / sum_a exp(logit_ia -
        # max_a logit_ia), so the log-denominator is max_a logit_ia - log(max_a softmax_ia).
        logits.fill_diagonal_(float("-inf"))
        softmax = torch.softmax(logits, dim=1)  # (b, b), diagonal 0; kept for backward
        log_denominator = logits.amax(dim=1).sub_(softmax.amax(dim=1).log_())  # (b,)
        total = (log_denominator * has_positive).sum() - inv_tau * positive_total
        ctx.save_for_backward(z, softmax, weighted_positives, has_positive)
        ctx.inv_tau = inv_tau
        return total / z.shape[0]

    @staticmethod
    @once_differentiable  # the saved softmax carries no graph: refuse double backward
    def backward(ctx, grad: torch.Tensor):
        z, softmax, weighted_positives, has_positive = ctx.saved_tensors
        scale = ctx.inv_tau / z.shape[0]
        # d loss / d logit_ij = softmax_ij / b for anchors i with positives; logit_ij feeds
        # both z_i and z_j, hence one product with the symmetrised matrix. (A contiguous
        # transposed copy plus an add is several times faster than adding a strided transpose.)
        d_logits = softmax * (has_positive * (grad * scale))[:, None]  # (b, b)
        d_logits += d_logits.T.contiguous()
        d_z = products.matmul(d_logits, z)  # (b, b) @ (b, h) -> (b, h)
        # Positive term: -sum_i w_i <z_i, S_{y_i} - z_i> is, per class c with weight w_c,
        # -w_c (|S_c|^2 - sum_{i in c} |z_i|^2), whose gradient at z_k is -2 w_c (S_c - z_k).
        return d_z.addcmul_(weighted_positives, grad, value=-2.0 * scale), None, None


def _scaled_gram(z: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * z @ z.T, (b, h) -> (b, b). On the CPU, for h >= 128, each row block is
    multiplied only with itself and the rows below it, straight into the output, and the
    transposes are copied; on a GPU the extra launches would cost more than the FLOPs saved.
    float64 on the CPU: no BLAS (pipeline/maths/products.py says why)."""
    b, h = z.shape
    if z.dtype == torch.float64 and z.device.type == "cpu":
        return products.matmul(z, z.T).mul_(scale)
    blocks = max(1, min(_GRAM_MAX_BLOCKS, b // _GRAM_BLOCK_ROWS))
    out = torch.empty(b, b, dtype=z.dtype, device=z.device)
    if blocks == 1 or h < _GRAM_MIN_DIM or z.device.type != "cpu":
        return torch.mm(z, z.T, out=out).mul_(scale)
    edges = [round(i * b / blocks) for i in range(blocks + 1)]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        strip = out[lo:hi, lo:]  # (hi - lo, b - lo), a strided view: BLAS writes it in place
        torch.addmm(strip, z[lo:hi], z[lo:].T, beta=0.0, alpha=scale, out=strip)
        out[hi:, lo:hi] = strip[:, hi - lo :].T
    return out


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the bias-free head's logits (b, K), mean over the batch.

    Written as logsumexp minus the true class's logit rather than ``F.cross_entropy``: its
    NLL kernel has no deterministic CUDA implementation (``use_deterministic_algorithms``
    raises on it), while ``gather``'s backward has one. Same value to float32 rounding.
    """
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)  # (b, K) -> (b,)
    return (torch.logsumexp(logits, dim=1) - true_logit).mean()
