"""How many intra-op threads a fit uses, so that its threads neither wait on each other for tiny kernels nor
fight another program for a core (docs/benchmarks.md#threads-on-a-busy-machine).

Two rules, applied at the start of each epoch on the CPU:
- a small eager step (a forward pass of fewer than ONE_THREAD_MACS multiply-adds a batch) runs on one
  thread: its few dozen small kernels each cost less than waking a second thread for them;
- cores that other programs kept busy over the last epoch (before the first: over `FIRST_LOOK` seconds)
  are left to them: two threads on two cores beside one busy program means one of ours keeps waiting for
  the core it shares, and every step waits for it.
A user's own choice wins: with OMP_NUM_THREADS set, or `torch.set_num_threads` called before the fit,
nothing is changed. The count is put back when the fit ends.

Waiting threads spin unless OMP_WAIT_POLICY=PASSIVE, which only works when set before torch starts:
`python -m mnist_lit` sets it (mnist_lit/__main__.py); in a notebook, set it in the first cell.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

ONE_THREAD_MACS = 10_000_000
FIRST_LOOK = 0.2  # seconds of looking at the machine before the first epoch
BUSY = 0.5  # a core counts as taken when other programs used it more than half of the time


def forward_macs(net: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of the Linear and Conv2d layers in one forward pass of the batch `x`."""
    total = 0

    def add(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels // module.groups * kh * kw
    hooks = [m.register_forward_hook(add) for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    training = net.training
    try:
        with torch.no_grad():
            net.eval()  # no dropout: the fit's random numbers stay as they were
            net(x[:1])
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    return total * len(x)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _machine_busy_seconds() -> float | None:
    """CPU seconds all programs have run since boot (Linux's /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class ThreadChoice:
    """Chooses the thread count per epoch (module docstring); `start` at the fit's first batch, `epoch` at
    each epoch start, `end` when the fit ends."""

    def __init__(self) -> None:
        self.started = False
        self.before: int | None = None  # the count to put back; None when the choice is not ours
        self.small = False
        self._look: tuple[float, float, float] | None = None

    @staticmethod
    def users_own() -> bool:
        """OMP_NUM_THREADS, or a torch.set_num_threads that differs from torch's default of one per core."""
        return "OMP_NUM_THREADS" in os.environ or torch.get_num_threads() != _cores()

    def start(self, net: nn.Module, x: torch.Tensor, compiled: bool) -> None:
        self.started = True
        if x.device.type != "cpu" or self.users_own():
            return
        self.before = torch.get_num_threads()
        self.small = not compiled and forward_macs(net, x) < ONE_THREAD_MACS
        self._look = self._now()
        if not self.small:
            time.sleep(FIRST_LOOK)
        self.epoch()

    def epoch(self) -> None:
        """Set the count for the next epoch from what other programs did since the last look."""
        if self.before is None:
            return
        now = self._now()
        others = self._others_busy(self._look, now)
        self._look = now
        taken = int(others + 1 - BUSY) if others is not None else 0  # 0.6 of a core counts as one, 0.4 as none
        free = self.before - taken
        threads = 1 if self.small else max(1, min(self.before, free))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def end(self) -> None:
        self.started = False
        if self.before is not None:
            torch.set_num_threads(self.before)
            self.before = None

    @staticmethod
    def _now() -> tuple[float, float, float]:
        return time.monotonic(), _machine_busy_seconds() or 0.0, time.process_time()

    @staticmethod
    def _others_busy(then: tuple[float, float, float] | None, now: tuple[float, float, float]) -> float | None:
        """Cores other programs kept busy between two looks, on average."""
        if then is None or _machine_busy_seconds() is None or now[0] - then[0] <= 0:
            return None
        wall, machine, ours = (b - a for a, b in zip(then, now))
        return max(0.0, (machine - ours) / wall)
