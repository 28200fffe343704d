"""The two losses of the paper, vectorised (tests compare them with naive loops).

Shapes: b = batch size, h = representation dim, K = number of classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss, the paper's variant (PAPER.md, Definitions).

    ``features`` (b, h) already lie on the sphere (the caller projects them). For an anchor i
    with positives P(i) (other batch positions of its class; a sample drawn twice is its own
    positive),
        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(<z_i,z_p>/tau) / sum_{a != i} exp(<z_i,z_a>/tau) ),
    and the batch loss is sum_i l_i / b: anchors without positives add 0 but count in b.
    """
    b = features.shape[0]
    logits = features @ features.T / temperature  # (b, h) @ (h, b) -> (b, b)
    self_mask = torch.eye(b, dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # the sum runs over a != i
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)  # (b, b)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask  # (b, b)
    num_positives = positives.sum(dim=1)  # (b,)
    # masked_fill, not multiply: the diagonal holds -inf and -inf * 0 is NaN.
    positive_sum = log_prob.masked_fill(~positives, 0.0).sum(dim=1)  # (b,)
    per_anchor = -positive_sum / num_positives.clamp(min=1)
    return per_anchor.sum() / b


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the bias-free head's logits (b, K), mean over the batch."""
    return F.cross_entropy(logits, labels)
