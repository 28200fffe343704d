"""SGD with momentum and weight decay, and Adam, as ``torch.optim`` computes them, without
its cost; and L-BFGS with a strong-Wolfe line search, without BLAS.

Creating a ``torch.optim`` optimiser imports ``torch._dynamo`` (its ``add_param_group`` is
wrapped to keep the compiler out), 1.1 s of every training job's start-up here; a digits
run is ~10 s, so over the default grid that was a tenth of the training time. Each
``torch.optim`` step and ``zero_grad`` also runs under a profiler record and hooks: on the
free-features problems (a few hundred numbers, 1,500 steps a run) that wrapping cost more
than the update itself. Both updates are a few lines, checked bit for bit against
``torch.optim`` in tests/test_optim.py:

    SGD:  g = grad + weight_decay * p;  buf = g (first step) or momentum * buf + g;
          p -= lr * buf
    Adam: m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2;  t += 1;
          p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

:class:`LBFGS` is Nocedal & Wright's (Numerical Optimization, 2nd ed.): the two-loop
recursion (Algorithm 7.4) with H0 = (s'y / y'y) I (eq. 7.20), and the line search of
Algorithms 3.5 and 3.6 with cubic interpolation (eq. 3.59). ``torch.optim.LBFGS`` would also
import ``torch._dynamo`` and take its inner products from BLAS (DDOT), whose float64 bytes
differ between CPU vendors (pipeline/maths/products.py); here every inner product is one
ATen sum. tests/test_optim.py checks the direction against the BFGS matrix built naively,
every accepted step against the strong Wolfe conditions, and the minima against
``torch.optim.LBFGS``'s.
"""

from __future__ import annotations

from collections import deque

import torch

from pipeline.maths import products


class SGD:
    """The subset of ``torch.optim.SGD`` training uses: lr set per step, no dampening, no
    Nesterov. ``state_dict`` holds the momentum buffers (None before the first step)."""

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                if self.buffers[i] is None:
                    self.buffers[i] = g.detach().clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(g)
                g = self.buffers[i]
            p.add_(g, alpha=-self.lr)

    def state_dict(self) -> dict:
        return {"momentum_buffer": [None if b is None else b.detach().cpu() for b in self.buffers]}

    def load_state_dict(self, state: dict) -> None:
        buffers = state["momentum_buffer"]
        if len(buffers) != len(self.params):
            raise ValueError(
                f"optimizer state holds {len(buffers)} momentum buffers, the model has "
                f"{len(self.params)} trained parameters"
            )
        # A copy: the buffers are updated in place and must not alias the caller's tensors.
        self.buffers = [
            None if b is None else b.to(p.device, copy=True)
            for b, p in zip(buffers, self.params, strict=True)
        ]


class Adam:
    """The subset of ``torch.optim.Adam`` free features use: no weight decay, no AMSGrad,
    ``lr`` set per step. The step count is a float, as torch keeps it (a float32 tensor
    read back with ``.item()``), so the bias corrections are the same doubles."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps = float(lr), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.steps = 0
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                           for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        t = float(self.steps)
        step_size = self.lr / (1 - self.beta1**t)
        bias_correction2_sqrt = (1 - self.beta2**t) ** 0.5
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-step_size)


class LineSearchError(RuntimeError):
    """The objective is not finite where the line search looked (NaN or inf)."""


def _cubic_minimiser(a: float, fa: float, da: float, b: float, fb: float, db: float,
                     low: float, high: float) -> float:
    """The minimiser in [low, high] of the cubic through (a, fa, slope da) and (b, fb, db)
    (Nocedal & Wright eq. 3.59); the interval's middle where the cubic has no minimum."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    radicand = d1 * d1 - da * db
    if radicand < 0.0:
        return 0.5 * (low + high)
    d2 = (1.0 if b > a else -1.0) * radicand**0.5
    denominator = db - da + 2.0 * d2
    if denominator == 0.0:
        return 0.5 * (low + high)
    x = b - (b - a) * (db + d2 - d1) / denominator
    return min(max(x, low), high)


class LBFGS:
    """Limited-memory BFGS on one tensor ``param`` for a closure ``objective()`` that returns
    the loss (a 0-d tensor with a graph to ``param``). :meth:`step` is one iteration: a
    direction from the last ``history`` pairs, then a step length meeting the strong Wolfe
    conditions (``c1``, ``c2``) within ``max_evaluations`` evaluations; ``loss`` and ``grad``
    hold the values at ``param``. The first step's trial length is min(1, 1 / |g|_1), as
    ``torch.optim.LBFGS``'s; every later one is 1, the quasi-Newton step. Once a line search
    finds no point below the current loss (rounding level: the minimum is reached to working
    precision), ``stalled`` is set and further steps change nothing and cost nothing.
    """

    def __init__(self, param: torch.Tensor, objective, history: int = 100, c1: float = 1e-4,
                 c2: float = 0.9, max_evaluations: int = 25):
        self.param, self.objective = param, objective
        self.c1, self.c2, self.max_evaluations = float(c1), float(c2), int(max_evaluations)
        self.memory: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=history)
        self.h_diag = 1.0
        self.steps = 0
        self.evaluations = 0
        self.stalled = False
        self.loss, self.grad = self._evaluate()

    def _evaluate(self) -> tuple[float, torch.Tensor]:
        with torch.enable_grad():
            loss = self.objective()
            (grad,) = torch.autograd.grad(loss, self.param)
        self.evaluations += 1
        value = float(loss.detach())
        if value != value or value in (float("inf"), float("-inf")):
            raise LineSearchError(f"L-BFGS: the objective is {value} at step {self.steps}")
        return value, grad.detach().reshape(-1)

    def _dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float(products.dot(a, b))

    def direction(self) -> torch.Tensor:
        """-H g by the two-loop recursion (Algorithm 7.4), H0 = h_diag I."""
        q = -self.grad
        alphas = []
        for s, y, rho in reversed(self.memory):
            alpha = rho * self._dot(s, q)
            q = q - alpha * y
            alphas.append(alpha)
        r = q * self.h_diag
        for (s, y, rho), alpha in zip(self.memory, reversed(alphas), strict=True):
            beta = rho * self._dot(y, r)
            r = r + (alpha - beta) * s
        return r

    def _at(self, x: torch.Tensor, t: float, d: torch.Tensor) -> tuple[float, torch.Tensor, float]:
        """Move ``param`` to x + t d and evaluate there: loss, gradient, slope along d."""
        with torch.no_grad():
            self.param.copy_((x + t * d).view_as(self.param))
        f, g = self._evaluate()
        return f, g, self._dot(g, d)

    def _line_search(self, x, d, f0, slope0, t):
        """A step length meeting the strong Wolfe conditions (Algorithm 3.5, with zoom of
        Algorithm 3.6); if none is found in ``max_evaluations``, the lowest point seen.
        Returns (t, f, g) and leaves ``param`` at x + t d."""
        sufficient = lambda t_, f_: f_ <= f0 + self.c1 * t_ * slope0  # noqa: E731
        curvature = lambda s_: abs(s_) <= -self.c2 * slope0  # noqa: E731
        prev = (0.0, f0, self.grad, slope0)
        best = prev
        evaluations = 0
        bracket = None
        while evaluations < self.max_evaluations:
            f, g, slope = self._at(x, t, d)
            evaluations += 1
            point = (t, f, g, slope)
            if f < best[1]:
                best = point
            if not sufficient(t, f) or (evaluations > 1 and f >= prev[1]):
                bracket = (prev, point)  # (lo, hi): a Wolfe point lies between
                break
            if curvature(slope):
                return t, f, g
            if slope >= 0.0:
                bracket = (point, prev)
                break
            # Still descending with sufficient decrease: extrapolate, at least a little,
            # at most tenfold.
            low, high = t + 0.01 * (t - prev[0]), 10.0 * t
            prev, t = point, _cubic_minimiser(prev[0], prev[1], prev[3], t, f, slope, low, high)
        while bracket is not None and evaluations < self.max_evaluations:
            lo, hi = bracket
            a, b = sorted((lo[0], hi[0]))
            if b - a <= 1e-12 * max(1.0, b):  # no room left between them
                break
            t = _cubic_minimiser(lo[0], lo[1], lo[3], hi[0], hi[1], hi[3], a, b)
            margin = 0.1 * (b - a)  # safeguard: keep the trial off the ends, or bisect
            if not a + margin <= t <= b - margin:
                t = 0.5 * (a + b)
            f, g, slope = self._at(x, t, d)
            evaluations += 1
            point = (t, f, g, slope)
            if f < best[1]:
                best = point
            if not sufficient(t, f) or f >= lo[1]:
                bracket = (lo, point)
                continue
            if curvature(slope):
                return t, f, g
            bracket = (point, lo) if slope * (hi[0] - lo[0]) >= 0.0 else (point, hi)
        t, f, g, _ = best
        with torch.no_grad():
            self.param.copy_((x + t * d).view_as(self.param))
        return t, f, g

    @torch.no_grad()
    def step(self) -> None:
        first, self.steps = self.steps == 0, self.steps + 1
        if self.stalled:
            return
        d = self.direction()
        slope0 = self._dot(self.grad, d)
        if not slope0 < 0.0:  # a stationary point (g = 0), or no descent left: stay
            self.stalled = True
            return
        t0 = min(1.0, 1.0 / float(self.grad.abs().sum())) if first else 1.0
        x = self.param.detach().reshape(-1).clone()
        t, f, g = self._line_search(x, d, self.loss, slope0, t0)
        if t == 0.0:  # nothing lower along d: the same search would fail again
            self.stalled = True
            return
        s, y = t * d, g - self.grad
        ys = self._dot(y, s)
        if ys > 1e-10:  # keep the pair only where it carries positive curvature
            self.memory.append((s, y, 1.0 / ys))
            self.h_diag = ys / self._dot(y, y)
        self.loss, self.grad = f, g
