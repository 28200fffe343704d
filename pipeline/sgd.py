"""SGD with momentum and weight decay, as ``torch.optim.SGD`` computes it, without its cost
at start-up.

Creating a ``torch.optim`` optimiser imports ``torch._dynamo`` (its ``add_param_group`` is
wrapped to keep the compiler out), 1.1 s of every training job's start-up here; a digits
run is ~10 s, so over the default grid that was a tenth of the training time. The update
is three lines, checked bit for bit against ``torch.optim.SGD`` in tests/test_sgd.py:

    g = grad + weight_decay * p;  buf = g (first step) or momentum * buf + g;  p -= lr * buf
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
