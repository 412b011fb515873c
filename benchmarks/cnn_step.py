"""The cnn's training step with nothing around it, for the benchmarks that set it beside its parts.

Import it after `mnist_lit.memory.tune()`, as `python -m mnist_lit` tunes the allocator before torch runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lit.models import TUTORIALS


def pool_before_relu(net: nn.Sequential) -> nn.Sequential:
    """The same modules with each ReLU that Keras puts before a MaxPool moved after it: ReLU commutes with
    max, so the values and gradients are the same and the ReLU runs on a quarter of them (studied in
    studies/pool_order.py; fit runs Keras' order)."""
    modules = list(net)
    for i in range(len(modules) - 1):
        if type(modules[i]) is nn.ReLU and type(modules[i + 1]) is nn.MaxPool2d:
            modules[i], modules[i + 1] = modules[i + 1], modules[i]
    return nn.Sequential(*modules)


def cnn_step(bf16: bool = False, batch: int = 128, pooled_first: bool = False) -> Callable[[], None]:
    """One update of a fresh cnn on one fixed random batch: its network channels-last in Keras' order (as
    `fit` runs it on the CPU), cross-entropy, Keras' RMSprop; no Lightning, data loading or metrics. With
    `bf16` the forward runs under bf16 autocast, as `--trainer.precision bf16-mixed` runs it; with
    `pooled_first`, each ReLU runs after its pool (`pool_before_relu`)."""
    model = TUTORIALS["cnn"]()
    net = (pool_before_relu(model.net) if pooled_first else model.net).to(memory_format=torch.channels_last)
    optimizer = model.configure_optimizers()
    images = torch.rand(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step
