"""SGD with momentum and weight decay, and Adam, as ``torch.optim`` computes them, without
its cost.

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
"""

from __future__ import annotations

import torch


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
