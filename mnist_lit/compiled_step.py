"""A whole training step as one compiled program: forward, loss, backward and the Keras optimizer's update.

A small network's eager step is dozens of tiny kernels, each dispatched from Python; compiled, the step is
one program (docs/benchmarks.md#small-steps-one-thread-and-one-compiled-program). `torch.func` takes the
gradients of a functional call of the network, and the update is the Keras optimizer's own `update`
(mnist_lit/optim.py), the same function its eager `step()` runs, on its own state: an eager step, a
checkpoint or a resume sees the same optimizer. `Tutorial.training_step` calls it; `Tutorial(compiled_steps=...)` switches it.
"""

from __future__ import annotations

import logging
import os
import shutil
import types
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

from mnist_lit.optim import KerasOptimizer

# the layers a compiled step was measured faster for; the cnn's convolutions and pooling were slower
# compiled (docs/benchmarks.md#the-cnn-against-keras-what-was-tried)
COMPILED_LAYERS = (nn.Sequential, nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Identity)
# mnist_lit's own choice compiles only fits at least this long, which earn the compile's seconds back
COMPILE_PAYS_STEPS = 10_000

LossAndTotals = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs (inductor's default, or $CXX), if there is one."""
    return shutil.which(os.environ.get("CXX", "g++"))


def worth_compiling(net: nn.Module, steps: float, on_cpu: bool) -> bool:
    """mnist_lit's choice when the user leaves `compiled_steps` unset: CPU fits of at least
    COMPILE_PAYS_STEPS steps of a network made only of COMPILED_LAYERS (tiny_mlp and fashion_mlp), where
    a C++ compiler is installed."""
    return (on_cpu and steps >= COMPILE_PAYS_STEPS and all(isinstance(m, COMPILED_LAYERS) for m in net.modules())
            and cpp_compiler() is not None)


class CompiledStep:
    """`step(x, y)` -> (loss, totals): one training step of `net` on a batch, the update included.

    Batches of the first batch's shape run compiled (`takes`); another shape (an epoch's short last batch)
    is left to the eager step rather than compiled again.
    """

    def __init__(self, net: nn.Module, optimizer: KerasOptimizer, loss_and_totals: LossAndTotals) -> None:
        names = {id(p): name for name, p in net.named_parameters()}
        self.params = optimizer.params
        self.names = [names[id(p)] for p in self.params]
        self.net, self.update, self.loss_and_totals = net, optimizer.update, loss_and_totals
        self.shape: torch.Size | None = None
        self.compiled = False  # whether the first call (the compile) has finished
        # a CUDA build of torch on a machine without CUDA warns about CUDA while it sets up its C++ compiler
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        # torch.compile keeps its programs, and counts them against a limit of 8, on the code object of the
        # function it compiles; each CompiledStep compiles a copy of `_step` with its own code object, so
        # that the programs of earlier fits in this process (tuning trials, a notebook's earlier cells) are
        # dropped with their CompiledStep instead of filling that limit
        f = type(self)._step
        step = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
        self.program = torch.compile(types.MethodType(step, self), fullgraph=True, dynamic=False)

    @classmethod
    def build(cls, net: nn.Module, optimizer: torch.optim.Optimizer,
              loss_and_totals: LossAndTotals) -> CompiledStep | None:
        """None for an optimizer that is not one of mnist_lit's Keras optimizers, or one that holds a
        parameter outside `net`."""
        in_net = {id(p) for p in net.parameters()}
        if not isinstance(optimizer, KerasOptimizer) or any(id(p) not in in_net for p in optimizer.params):
            return None
        return cls(net, optimizer, loss_and_totals)

    def takes(self, x: torch.Tensor) -> bool:
        if self.shape is None:
            self.shape = x.shape
        return x.shape == self.shape

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def loss_of(weights: list[torch.Tensor]):
            logits = functional_call(self.net, dict(zip(self.names, weights)), (x,))
            return self.loss_and_totals(logits, y)
        grads, (loss, totals) = grad_and_value(loss_of, has_aux=True)([p.detach() for p in self.params])
        with torch.no_grad():
            self.update(grads)
        return loss.detach(), totals

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.program(x, y)
        self.compiled = True
        return result
