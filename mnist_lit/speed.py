"""mnist_lit's speed devices, in one Lightning callback that every tutorial adds to its Trainer.

`Tutorial.configure_callbacks` returns a `SpeedDevices`, so a fit from the CLI, from Python or from a
notebook gets the same devices, and the training step itself stays the plain recipe. None of them changes
what is computed, only how fast (what each buys: docs/benchmarks.md#what-each-speed-device-buys):
- the thread count, measured at the start of every CPU epoch (mnist_lit/threads.py);
- channels-last convolution weights on the CPU (`channels_last`, the cnn), the same values in another
  memory order: the state_dict and exports are unchanged;
- denormal numbers flushed to zero, as TensorFlow does on the CPU: an update that drives weights towards
  zero (Adam at a large learning rate) otherwise runs at a small fraction of its speed.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from mnist_lit.threads import ThreadChoice


def flushes_denormals() -> bool:
    """Whether this thread's CPU flushes denormals to zero: torch can set the mode but not read it back."""
    return bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)


class SpeedDevices(L.Callback):
    """Threads, channels-last and denormals for one fit (module docstring). Everything it changes in the
    process (torch's thread count, the denormal mode) is put back when the fit ends."""

    def __init__(self, channels_last: bool | None = None) -> None:
        """
        Args:
            channels_last: keep convolution weights channels-last. None: on for a network with
                convolutions on the CPU, where it was measured faster; not measured on GPUs.
        """
        self.channels_last = channels_last
        self.threads = ThreadChoice()
        self.flushed_before: bool | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        on_cpu = trainer.strategy.root_device.type == "cpu"
        choice = self.channels_last
        if choice is None:
            choice = on_cpu and any(isinstance(m, nn.Conv2d) for m in pl_module.modules())
        if choice:  # strides only; a 1-channel input needs no conversion to match
            pl_module.to(memory_format=torch.channels_last)
        if stage == "fit" and on_cpu and self.flushed_before is None:
            # the mode of this thread, and of the threads it starts later: torch starts its OpenMP threads
            # at its first parallel work, after this in a fresh process (`python -m mnist_lit`); threads
            # started before keep theirs (in a notebook, call torch.set_flush_denormal(True) first)
            self.flushed_before = flushes_denormals()
            torch.set_flush_denormal(True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.threads.end()
        if self.flushed_before is not None:
            torch.set_flush_denormal(self.flushed_before)
            self.flushed_before = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")  # Lightning skips teardown after an exception

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.threads.epoch_start(trainer.strategy.root_device.type == "cpu", trainer.num_training_batches)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.threads.batch_start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self.threads.batch_end()
