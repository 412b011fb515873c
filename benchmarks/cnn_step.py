"""The cnn's training step with nothing around it, for the benchmarks that set it beside its parts.

Import it after `mnist_lit.memory.tune()`, as `python -m mnist_lit` tunes the allocator before torch runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from mnist_lit.engine import pool_before_relu
from mnist_lit.models import TUTORIALS


def cnn_step(bf16: bool = False, batch: int = 128, keras_order: bool = False) -> Callable[[], None]:
    """One update of a fresh cnn on one fixed random batch: its network channels-last and pooled before
    its ReLUs (as `fit` runs it on the CPU), cross-entropy, Keras' RMSprop; no Lightning, data loading or
    metrics. With `bf16` the forward runs under bf16 autocast, as `--trainer.precision bf16-mixed` runs
    it; with `keras_order` the network runs in the order its file lists, Keras' (ReLU, then pool)."""
    model = TUTORIALS["cnn"]()
    net = (model.net if keras_order else pool_before_relu(model.net)).to(memory_format=torch.channels_last)
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
