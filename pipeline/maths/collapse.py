"""Neural-collapse measures NC2-NC4 (Papyan, Han, Donoho 2020) and the linear probe.

Pure functions of class means, head rows and embeddings (float64 numpy); no files, no params.
Definitions follow Papyan et al. and the neural-collapse toolkits (rhubarbwu/neural-collapse,
felixsh/nc-toolbox); NC1 lives in pipeline.stages.geometry. With K classes, class means mu_k, their
mean mu_G (the mean of the class means, as Papyan's "global mean" for balanced classes) and
centred means m_k = mu_k - mu_G:

- NC2, equinorm: std_k |m_k| / mean_k |m_k| (coefficient of variation, ddof 0); 0 when the
  centred means have equal norms. The same for the head rows |w_k| (ce models).
- NC2, equiangularity: over pairs k < l of cos(m_k, m_l), their standard deviation (ddof 0)
  and the mean of |cos(m_k, m_l) + 1/(K-1)|; both 0 exactly on a regular simplex.
- NC3, self-duality: || W / ||W||_F - M / ||M||_F ||_F with M the (K, h) matrix of centred
  means and W the (K, h) head; 0 when the head is the centred means up to scale. In [0, 2].
- NC4: the fraction of samples on which the head's argmax agrees with the nearest-class-mean
  classifier (1 at collapse); computed by the streaming accumulator in pipeline.stages.geometry.

The linear probe (the paper's third evaluation): a multinomial logistic regression, with
intercept, retrained on frozen training embeddings and the labels trained on, by L-BFGS
from zero: minimises 1/2 ||W||_F^2 + C sum_i CE_i (scikit-learn's LogisticRegression
objective), deterministic.
"""

from __future__ import annotations

import math

import numpy as np


def _cv(values: np.ndarray) -> float:
    mean = float(np.mean(values))
    return float(np.std(values)) / mean if mean > 0 else math.nan


def centred(means: np.ndarray) -> np.ndarray:
    """(K, h) class means minus their mean."""
    mu = np.asarray(means, dtype=np.float64)
    return mu - mu.mean(axis=0)


def equinorm(vectors: np.ndarray) -> float:
    """Coefficient of variation of the row norms of (K, h) ``vectors``; NaN if all are 0."""
    return _cv(np.linalg.norm(np.asarray(vectors, dtype=np.float64), axis=1))


def equiangularity(means: np.ndarray) -> tuple[float, float]:
    """(std of the pairwise cosines, mean |cos + 1/(K-1)|) of the centred (K, h) means."""
    m = centred(means)
    k = m.shape[0]
    norms = np.linalg.norm(m, axis=1)
    if k < 2 or np.any(norms == 0):
        return math.nan, math.nan
    unit = m / norms[:, None]
    i, j = np.triu_indices(k, k=1)
    cos = np.clip((unit @ unit.T)[i, j], -1.0, 1.0)  # (K, h) @ (h, K) -> pairs i < j
    return float(np.std(cos)), float(np.mean(np.abs(cos + 1.0 / (k - 1))))


def self_duality(head: np.ndarray, means: np.ndarray) -> float:
    """|| W/||W||_F - M/||M||_F ||_F for the (K, h) head W and centred means M."""
    w = np.asarray(head, dtype=np.float64)
    m = centred(means)
    w_norm, m_norm = np.linalg.norm(w), np.linalg.norm(m)
    if w_norm == 0 or m_norm == 0:
        return math.nan
    return float(np.linalg.norm(w / w_norm - m / m_norm))


def collapse_measures(means: np.ndarray, head: np.ndarray | None) -> dict[str, float | None]:
    """NC2 and NC3 of the present classes' (K', h) means and, if given, the matching head rows."""
    std, deviation = equiangularity(means)
    out: dict[str, float | None] = {
        "nc2_equinorm_cv": equinorm(centred(means)),
        "nc2_equiangular_std": std,
        "nc2_simplex_angle_deviation": deviation,
        "nc2_head_equinorm_cv": None,
        "nc3_self_duality": None,
    }
    if head is not None:
        out["nc2_head_equinorm_cv"] = equinorm(head)
        out["nc3_self_duality"] = self_duality(head, means)
    return out


def _probe_objective(theta, x, y, num_classes: int, inverse_regularisation: float):
    """Mean multinomial cross-entropy of logits x W^T + b plus ||W||_F^2 / (2 C N), and its
    gradient; theta = (W flattened, b). The intercept is not penalised (as scikit-learn)."""
    n, h = x.shape
    w = theta[: num_classes * h].reshape(num_classes, h)
    logits = x @ w.T + theta[num_classes * h:]  # (N, h) @ (h, K) -> (N, K)
    shift = logits.max(axis=1, keepdims=True)
    log_z = shift[:, 0] + np.log(np.exp(logits - shift).sum(axis=1))  # (N,) logsumexp
    rows = np.arange(n)
    value = (log_z.sum() - logits[rows, y].sum()) / n
    value += 0.5 * np.sum(w * w) / (inverse_regularisation * n)
    residual = np.exp(logits - log_z[:, None])  # softmax (N, K), minus the one-hot labels:
    residual[rows, y] -= 1.0
    grad_w = (residual.T @ x + w / inverse_regularisation) / n  # (K, N) @ (N, h) -> (K, h)
    return value, np.concatenate([grad_w.ravel(), residual.sum(axis=0) / n])


def linear_probe(z_train: np.ndarray, y_train: np.ndarray, num_classes: int,
                 inverse_regularisation: float, max_iterations: int):
    """Fit the probe by L-BFGS (scipy); returns (predict function, iterations, converged).

    The objective is scikit-learn's LogisticRegression (multinomial, with intercept, L2
    penalty 1/2 ||W||^2 + C sum_i CE_i, divided here by C N for conditioning: same minimum);
    tests/test_geometry.py checks the fit against scikit-learn. Written out rather than
    imported because scikit-learn's import costs 1.1 s of every geometry job (scipy's
    optimiser, the same L-BFGS-B, 0.5 s).
    """
    from scipy.optimize import minimize

    x = np.asarray(z_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.int64)
    k, h = num_classes, x.shape[1]
    result = minimize(_probe_objective, np.zeros(k * h + k), args=(x, y, k,
                      float(inverse_regularisation)), jac=True, method="L-BFGS-B",
                      options={"maxiter": int(max_iterations), "gtol": 1e-8,
                               "ftol": 64 * np.finfo(float).eps})
    w = result.x[: k * h].reshape(k, h)
    b = result.x[k * h:]

    def predict(z: np.ndarray) -> np.ndarray:
        return np.argmax(np.asarray(z, dtype=np.float64) @ w.T + b, axis=1)

    return predict, int(result.nit), bool(result.success)
