"""Keras' optimizers, with Keras' arithmetic where torch's differs.

RMSprop: Keras puts epsilon inside the square root, torch outside it:

    Keras:  v = rho * v + (1 - rho) * g^2;   p -= lr * g / sqrt(v + eps)
    torch:  v = rho * v + (1 - rho) * g^2;   p -= lr * g / (sqrt(v) + eps)

With eps = 1e-7 the two differ most on a weight whose gradient is small: Keras divides by at least
sqrt(1e-7) = 3.2e-4, torch by at least 1e-7 (how far apart their weights end up:
docs/benchmarks.md#parity-with-keras).

Adam differs in where epsilon goes relative to the bias correction:

    Keras:  p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

In the first steps Keras' effective epsilon is up to 30 times torch's; it matters for weights whose
gradients are tiny. Plain SGD is the same in both.

Each optimizer writes its update once, in `update(grads)`, as one foreach op per step of the formula over
all parameters, on its own state; `step()` runs it on the parameters' `.grad`. The state uses torch's names (`step`, `exp_avg`, `exp_avg_sq`; `velocity`), created as
torch's optimizers create them. `tests/test_keras_parity.py` checks all three against Keras' own steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class KerasOptimizer(torch.optim.Optimizer):
    """One parameter group whose update is `update(grads)`, given in the order of `params`."""

    def __init__(self, params: Iterable, defaults: dict) -> None:
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} takes one parameter group")
        self.params: list[torch.Tensor] = self.param_groups[0]["params"]
        for p in self.params:
            self.init_state(self.state[p], p)

    def init_state(self, state: dict, p: torch.Tensor) -> None:
        """A parameter's state before its first step (none by default)."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for p in self.params:  # a checkpoint from before the first step may hold no state yet
            if not self.state[p]:
                self.init_state(self.state[p], p)

    def update(self, grads: list[torch.Tensor]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if all(p.grad is not None for p in self.params):
            self.update([p.grad for p in self.params])
        elif any(p.grad is not None for p in self.params):
            raise RuntimeError(f"{type(self).__name__}: some parameters have no gradient; train all of them")
        return loss

    def _group(self) -> dict:
        return self.param_groups[0]


def _zeros(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class KerasRMSprop(KerasOptimizer):
    """Keras' RMSprop (no momentum, not centered): velocity from zero, eps inside the square root."""

    def __init__(self, params: Iterable, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    def init_state(self, state: dict, p: torch.Tensor) -> None:
        state["velocity"] = _zeros(p)

    def update(self, grads: list[torch.Tensor]) -> None:
        group = self._group()
        velocities = [self.state[p]["velocity"] for p in self.params]
        # one kernel per op over all tensors, as torch's own optimizers do
        torch._foreach_mul_(velocities, group["rho"])
        torch._foreach_addcmul_(velocities, grads, grads, value=1 - group["rho"])
        denominators = torch._foreach_add(velocities, group["eps"])
        torch._foreach_sqrt_(denominators)
        torch._foreach_addcdiv_(self.params, grads, denominators, value=-group["lr"])


class KerasAdam(KerasOptimizer):
    """Keras' Adam: eps added to sqrt(v), the bias corrections folded into the learning rate."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def init_state(self, state: dict, p: torch.Tensor) -> None:
        state.update(step=torch.tensor(0.0), exp_avg=_zeros(p), exp_avg_sq=_zeros(p))

    def update(self, grads: list[torch.Tensor]) -> None:
        group = self._group()
        (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
        states = [self.state[p] for p in self.params]
        steps = [s["step"] for s in states]
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denominators = torch._foreach_sqrt(v)
        torch._foreach_add_(denominators, eps)
        t = float(steps[0])  # a Python number: no kernel launches for the bias corrections
        rate = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        torch._foreach_addcdiv_(self.params, m, denominators, value=-rate)


class KerasSGD(KerasOptimizer):
    """Plain SGD (no momentum), as Keras' `SGD(learning_rate)`: p -= lr * g."""

    def __init__(self, params: Iterable, lr: float = 0.01) -> None:
        super().__init__(params, {"lr": lr})

    def update(self, grads: list[torch.Tensor]) -> None:
        torch._foreach_add_(self.params, grads, alpha=-self._group()["lr"])
