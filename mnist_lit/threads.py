"""How many intra-op threads a fit uses: as many as are faster, measured each epoch on the fit itself.

At the start of every epoch on the CPU, after one batch to settle, a few of the epoch's Lightning batches
run on torch's full thread count and as many on one thread; the rest of the epoch runs on whichever was
faster (one thread when it is within TIE of the other: it leaves a core to the rest of the machine). Why
measure instead of a rule (docs/benchmarks.md#threads-on-a-busy-machine):
- a small step's kernels each cost less than waking a second thread for them (softmax_regression, and
  tiny_mlp and fashion_mlp eagerly), so one thread is faster even on an idle machine;
- beside another program that keeps a core busy, or a second fit, two threads on two cores mean one of
  ours keeps waiting for a core it shares, and every step waits for it: there one thread is faster for
  every tutorial;
- on an idle machine the cnn's convolutions run faster on every core.
The batches of the trial are real training: only their speed differs, and the last digits of the sums,
which follow the thread count. A user's own choice wins: with OMP_NUM_THREADS set, `torch.set_num_threads`
called before the fit, or deterministic algorithms asked for (`--trainer.deterministic true`), nothing is
changed. The count is put back when the fit ends.

How long waiting threads spin before they sleep is OpenMP's setting, read only when torch starts:
`python -m mnist_lit` sets a short spin (GOMP_SPINCOUNT, mnist_lit/__main__.py); the tutorial notebooks set
OMP_WAIT_POLICY=PASSIVE in their first cell.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

TIE = 1.05  # one thread is kept unless all threads are more than 5% faster
MOST_TRIAL_BATCHES = 5  # Lightning batches timed per thread count, at most...
EPOCH_SHARE = 20  # ...and at most 1/20 of the epoch's batches, at least 2


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ThreadChoice:
    """Chooses the thread count each epoch (module docstring). The module calls `epoch_start`, then
    `batch_start` and `batch_end` around each training batch, and `end` when the fit ends."""

    def __init__(self, clock=time.perf_counter) -> None:
        self.clock = clock
        self.most: int | None = None  # torch's thread count before the fit; 0 when the choice is not ours
        self.plan: list[int | None] = []  # thread counts of the next batches (None: settle, not timed)
        self.times: dict[int, list[float]] = {}
        self.current: int | None = None
        self.started = 0.0
        self.chosen: int | None = None  # the last epoch's choice

    @staticmethod
    def users_own() -> bool:
        """OMP_NUM_THREADS, a torch.set_num_threads that differs from torch's default of one per core, or
        deterministic algorithms (a run that must repeat to the last digit keeps one thread count)."""
        return ("OMP_NUM_THREADS" in os.environ or torch.get_num_threads() != cores()
                or torch.are_deterministic_algorithms_enabled())

    def epoch_start(self, on_cpu: bool, batches: int | float) -> None:
        if self.most is None:
            self.most = torch.get_num_threads() if on_cpu and not self.users_own() else 0
        if self.most <= 1:
            return
        k = max(2, min(MOST_TRIAL_BATCHES, int(batches) // EPOCH_SHARE if batches != float("inf") else MOST_TRIAL_BATCHES))
        self.plan = [None] + [self.most] * k + [1] * k
        self.times = {self.most: [], 1: []}
        torch.set_num_threads(self.most)

    def batch_start(self) -> None:
        self.current = self.plan.pop(0) if self.plan else None
        if self.current is not None:
            torch.set_num_threads(self.current)
        self.started = self.clock()

    def batch_end(self) -> None:
        if self.current is None:
            return
        self.times[self.current].append(self.clock() - self.started)
        self.current = None
        if not self.plan:  # the trial is over: the rest of the epoch runs on the faster count
            many, one = (statistics.median(self.times[n]) for n in (self.most, 1))
            self.chosen = 1 if one <= many * TIE else self.most
            torch.set_num_threads(self.chosen)

    def end(self) -> None:
        if self.most:
            torch.set_num_threads(self.most)
        self.most, self.plan, self.current = None, [], None
