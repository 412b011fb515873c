"""Optimizers with Keras' arithmetic, where torch's differ.

RMSprop: Keras puts epsilon inside the square root, torch outside it:

    Keras:  v = rho * v + (1 - rho) * g^2;   p -= lr * g / sqrt(v + eps)
    torch:  v = rho * v + (1 - rho) * g^2;   p -= lr * g / (sqrt(v) + eps)

With eps = 1e-7 the two differ most on a weight whose gradient is small: Keras divides by at least
sqrt(1e-7) = 3.2e-4, torch by at least 1e-7 (how far apart their weights end up:
docs/benchmarks.md#parity-with-keras). `KerasRMSprop` computes Keras' update.

Adam differs in where epsilon goes relative to the bias correction:

    Keras:  p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The two agree when torch's eps is eps / sqrt(1 - b2^t), which `KerasAdam` sets before every step. In the
first steps that is up to 30 times torch's eps; it matters for weights whose gradients are tiny.

Plain SGD is the same in both. `tests/test_keras_parity.py` checks all three against Keras' own steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


class KerasRMSprop(torch.optim.Optimizer):
    """Keras' RMSprop (no momentum, not centered): velocity from zero, eps inside the square root."""

    def __init__(self, params: Iterable, lr: float = 1e-3, rho: float = 0.9, eps: float = 1e-7) -> None:
        super().__init__(params, {"lr": lr, "rho": rho, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            velocities = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            # one fused kernel per op over all tensors of the group, as torch's own optimizers do
            torch._foreach_mul_(velocities, group["rho"])
            torch._foreach_addcmul_(velocities, grads, grads, value=1 - group["rho"])
            denominators = torch._foreach_add(velocities, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])
        return loss


class KerasAdam(torch.optim.Adam):
    """`torch.optim.Adam` with Keras' epsilon: same state, state_dict and speed, Keras' updates."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.keras_eps = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            state = self.state.get(group["params"][0]) if group["params"] else None
            t = float(state["step"]) + 1 if state else 1.0  # the step about to be taken (a CPU tensor: no sync)
            group["eps"] = self.keras_eps / math.sqrt(1 - group["betas"][1] ** t)
        return super().step(closure)


# ---------------------------------------------------------------- the same updates as plain tensor ops

Update = Callable[[list[torch.Tensor]], None]


def functional_update(optimizer: torch.optim.Optimizer) -> Update | None:
    """`optimizer.step()` written as tensor ops on gradients given in the order of its parameters, so
    that a compiled training step can hold it (mnist_lit/engine.py). It reads and writes the optimizer's
    own state tensors, created here as the optimizer itself would, so checkpoints, resumes and eager steps
    mix freely with it. None for an optimizer or a setting it does not cover."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(optimizer.param_groups) != 1 or not params:
        return None
    group, state = optimizer.param_groups[0], optimizer.state
    lr = group["lr"]
    if type(optimizer) is KerasAdam and group["weight_decay"] == 0 and not (group["amsgrad"] or group["maximize"]):
        (b1, b2), eps = group["betas"], optimizer.keras_eps
        for p in params:
            if not state[p]:  # as torch.optim.Adam starts a parameter's state
                state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        steps = [state[p]["step"] for p in params]
        moments = [(state[p]["exp_avg"], state[p]["exp_avg_sq"]) for p in params]

        def adam(grads: list[torch.Tensor]) -> None:
            for p, g, step, (m, v) in zip(params, grads, steps, moments):
                step += 1
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                # Keras' arithmetic, as in the module docstring
                p.sub_(lr * (1 - b2 ** step).sqrt() / (1 - b1 ** step) * m / (v.sqrt() + eps))
        return adam
    if type(optimizer) is KerasRMSprop:
        rho, eps = group["rho"], group["eps"]
        for p in params:
            if not state[p]:
                state[p]["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        velocities = [state[p]["velocity"] for p in params]

        def rmsprop(grads: list[torch.Tensor]) -> None:
            for p, g, v in zip(params, grads, velocities):
                v.mul_(rho).addcmul_(g, g, value=1 - rho)
                p.addcdiv_(g, (v + eps).sqrt(), value=-lr)
        return rmsprop
    plain = not (group["momentum"] or group["weight_decay"] or group["nesterov"] or group["maximize"]) \
        if type(optimizer) is torch.optim.SGD else False
    if plain:
        def sgd(grads: list[torch.Tensor]) -> None:
            for p, g in zip(params, grads):
                p.sub_(g, alpha=lr)
        return sgd
    return None
