"""Supcon forward + backward on the CPU: pipeline.maths.losses.supcon_loss against a reference.

The reference is the straightforward formulation popularised by the SupContrast code base
(Khosla et al. 2020), written here from its description: a full similarity matrix divided by
tau, the row maximum subtracted, a float label-equality mask repeated over views, the
self-contrast entries removed by a scattered mask, masked exponentials summed, and the mean
log-probability over positives; autograd does the backward pass. Both give the paper's
variant of the loss (anchors without positives add 0 and count in b).

Prints a table; it is a measurement, not a test (timings never gate the test suite). Each
configuration checks that both losses and their gradients agree (|loss difference| <= 1e-5,
relative); a disagreement exits with status 1.

The "products" column times only the matrix products ours cannot avoid: its Gram matrix (upper
row blocks only, pipeline.maths.losses._scaled_gram) and the one (b, b) @ (b, d) product of its
backward pass. "ceiling" is the reference's time over that: the speedup ours would reach if
everything else it does (softmax, class sums, autograd bookkeeping) cost nothing. The
reference does three full b^2 d products (one forward, two in autograd's backward).
Usage: python benchmarks/bench_supcon.py [--repeats 20] [--threads 1] [--classes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from pipeline.maths.losses import _scaled_gram, supcon_loss

CONFIGS = [(256, 128), (256, 512), (1024, 128), (1024, 512)]  # (b, d)
TEMPERATURE = 0.1  # the paper's


def reference_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Mask-repeat-scatter formulation, one view per sample (n_views = 1)."""
    views = features.unsqueeze(1)  # (b, n_views, d)
    b, n_views = views.shape[:2]
    contrast = torch.cat(torch.unbind(views, dim=1), dim=0)  # (n_views b, d)
    anchor = contrast  # every view is an anchor ("all" mode)
    similarity = torch.div(anchor @ contrast.T, temperature)  # (n_views b, n_views b)
    row_max, _ = similarity.max(dim=1, keepdim=True)
    logits = similarity - row_max.detach()  # numerical stability
    same_label = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float()  # (b, b)
    same_label = same_label.repeat(n_views, n_views)
    rows = torch.arange(b * n_views).view(-1, 1)
    not_self = torch.scatter(torch.ones_like(same_label), 1, rows, 0)
    positives = same_label * not_self
    exp_logits = torch.exp(logits) * not_self
    log_prob = logits - torch.log(exp_logits.sum(dim=1, keepdim=True))
    num_positives = positives.sum(dim=1)
    num_positives = torch.where(num_positives < 1e-6, 1, num_positives)  # no positive: adds 0
    mean_log_prob_pos = (positives * log_prob).sum(dim=1) / num_positives
    return (-mean_log_prob_pos).view(n_views, b).mean()


def time_once(fn, x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    z = x.clone().requires_grad_()
    start = time.perf_counter()
    loss = fn(z, labels, TEMPERATURE)
    loss.backward()
    return time.perf_counter() - start, loss.item(), z.grad


def time_products(x: torch.Tensor) -> float:
    """Seconds for the products ours needs: the blocked Gram matrix and one (b, b) @ (b, d)."""
    start = time.perf_counter()
    gram = _scaled_gram(x, 1.0 / TEMPERATURE)
    gram @ x
    return time.perf_counter() - start


def bench(b: int, d: int, repeats: int, classes: int) -> dict:
    generator = torch.Generator().manual_seed(b * 10_000 + d)
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=generator), dim=1)
    labels = torch.randint(0, classes, (b,), generator=generator)
    fns = {"reference": reference_supcon, "ours": supcon_loss}
    times = {name: [] for name in [*fns, "products"]}
    results = {}
    for name, fn in fns.items():  # warm-up, and the values compared
        _, loss, grad = time_once(fn, x, labels)
        results[name] = (loss, grad)
    time_products(x)
    for _ in range(repeats):  # interleaved, so a busy moment hits all three
        for name, fn in fns.items():
            times[name].append(time_once(fn, x, labels)[0])
        times["products"].append(time_products(x))
    (ref_loss, ref_grad), (our_loss, our_grad) = results["reference"], results["ours"]
    return {
        "b": b,
        "d": d,
        **{f"{n}_min": 1e3 * min(t) for n, t in times.items()},
        **{f"{n}_median": 1e3 * statistics.median(t) for n, t in times.items()},
        "loss_diff": abs(our_loss - ref_loss) / abs(ref_loss),
        "grad_diff": float((our_grad - ref_grad).abs().max() / ref_grad.abs().max()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--classes", type=int, default=10, help="labels drawn from 0..K-1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(b, d, args.repeats, args.classes) for b, d in CONFIGS]
    print(
        f"supcon forward+backward, float32, CPU, {args.threads} thread(s), K = {args.classes}, "
        f"tau = {TEMPERATURE}; ms per call, min (median) of {args.repeats}"
    )
    header = (
        f"{'b':>5} {'d':>4} {'reference ms':>17} {'ours ms':>17} {'speedup':>15}"
        f" {'products ms':>12} {'ceiling':>8} {'rel |dloss|':>12} {'rel max|dgrad|':>15}"
    )
    print(header)
    ok = True
    for r in rows:
        speed_min = r["reference_min"] / r["ours_min"]
        speed_median = r["reference_median"] / r["ours_median"]
        print(
            f"{r['b']:>5} {r['d']:>4}"
            f" {r['reference_min']:>7.2f} ({r['reference_median']:>7.2f})"
            f" {r['ours_min']:>7.2f} ({r['ours_median']:>7.2f})"
            f" {speed_min:>5.2f}x ({speed_median:>5.2f}x)"
            f" {r['products_min']:>12.2f} {r['reference_min'] / r['products_min']:>7.2f}x"
            f" {r['loss_diff']:>12.1e} {r['grad_diff']:>15.1e}"
        )
        ok &= r["loss_diff"] <= 1e-5 and r["grad_diff"] <= 1e-4
    if not ok:
        print("values differ beyond 1e-5 (loss) or 1e-4 (gradient)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
