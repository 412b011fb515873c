"""Optimizers with Keras' arithmetic.

RMSprop and SGD already compute what Keras computes. Adam differs in where epsilon goes:

    Keras:  p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The two agree when torch's eps is eps / sqrt(1 - b2^t), which `KerasAdam` sets before every step. In the
first steps that is up to 30 times torch's eps; it matters for weights whose gradients are tiny.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


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
