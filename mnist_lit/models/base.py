"""The LightningModule of the five tutorials: a plain network with Keras' training recipe around it.

Each tutorial (models/cnn.py, ...) is a plain `nn.Sequential` in Keras' layer order and a small subclass
that sets its recipe's defaults. This module is what Keras' `compile` and `fit` do, written in Lightning:
the loss (cross-entropy on logits), the optimizer (Keras' arithmetic, mnist_lit/optim.py), the metrics
(torchmetrics) and the training step. Lightning's automatic optimization runs the rest around the step, as
its documentation teaches: `zero_grad`, `backward`, gradient clipping and accumulation when the Trainer is
asked for them, the optimizer's `step` and any learning-rate schedule.

The speed devices (thread count, channels-last, denormals) change no result; they are one callback,
mnist_lit/speed.py, which `configure_callbacks` adds to every fit.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from lightning.pytorch.cli import LRSchedulerCallable
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mnist_lit.data import DATASETS, DatasetName
from mnist_lit.errors import ArgumentError, UserError, check_choice
from mnist_lit.optim import KerasAdam, KerasRMSprop, KerasSGD
from mnist_lit.speed import SpeedDevices

Optimizer = Literal["rmsprop", "adam", "sgd"]
# Keras' optimizers with the tutorials' settings: RMSprop's rho 0.9 and both epsilons are Keras' defaults
OPTIMIZERS = {"rmsprop": lambda params, lr: KerasRMSprop(params, lr=lr, rho=0.9, eps=1e-7),
              "adam": lambda params, lr: KerasAdam(params, lr=lr, eps=1e-7),
              "sgd": lambda params, lr: KerasSGD(params, lr=lr)}
STAGES = ("train", "val", "test")


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


def keras_init(net: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases (torch's xavier_uniform_ uses the same fans)."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Tutorial(L.LightningModule):
    """A tutorial's network with its Keras training recipe; `forward` returns logits."""

    name: ClassVar[str]

    def __init__(self, net: nn.Module, optimizer: Optimizer = "rmsprop", lr: PositiveFloat = 1e-3,
                 loss_reduction: Literal["mean", "sum"] = "mean", dataset: DatasetName = "mnist",
                 lr_scheduler: LRSchedulerCallable | None = None, channels_last: bool | None = None) -> None:
        """
        Args:
            net: the plain network (given by the subclass, not a CLI option).
            optimizer: "rmsprop" (Keras': rho 0.9, eps 1e-7 inside the square root), "adam" (eps 1e-7,
                added where Keras adds it) or "sgd" (plain).
            lr: learning rate.
            loss_reduction: "mean" cross-entropy over the batch (Keras), or "sum" (the TF1 tutorial).
            dataset: the data set trained on; linked from `data.dataset`, it names the classes in exports.
            lr_scheduler: a learning-rate schedule over the Keras optimizer, stepped by Lightning each
                epoch (on the CLI: `--lr_scheduler StepLR --lr_scheduler.step_size 1`). None: Keras'
                constant rate.
            channels_last: keep convolution weights channels-last (mnist_lit/speed.py). None: on for a
                network with convolutions on the CPU, where it was measured faster.
        """
        super().__init__()
        check_choice("optimizer", optimizer, OPTIMIZERS)
        check_choice("loss_reduction", loss_reduction, ("mean", "sum"))
        check_choice("dataset", dataset, DATASETS)
        if not lr > 0:
            raise ArgumentError(f"lr={lr!r}: must be a number above 0")
        # plain values only, so that a checkpoint loads with weights_only=True; the schedule is code
        self.save_hyperparameters(ignore=["net", "lr_scheduler"])
        self.net = net
        self.lr_scheduler = lr_scheduler
        self.init_weights()
        # Keras' metrics, per stage and epoch: the mean loss per sample and the share of right answers
        self.metrics = nn.ModuleDict({
            name: MeanMetric() if name.endswith("loss") else MulticlassAccuracy(10, average="micro", validate_args=False)
            for stage in STAGES for name in (f"{stage}_loss", f"{stage}_acc")})
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # set after `test`, rows = true class

    def init_weights(self) -> None:
        """Keras' initialisation of a fresh network (glorot-uniform kernels, zero biases)."""
        keras_init(self.net)

    @property
    def classes(self) -> tuple[str, ...]:
        return DATASETS[self.hparams.dataset].classes

    def metadata(self) -> dict[str, Any]:
        """What every checkpoint of this model records beside its weights, in plain values."""
        return {"tutorial": self.name, "dataset": self.hparams.dataset, "classes": list(self.classes),
                "params": count_params(self.net)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (softmax only in `predict_step` and in exports)."""
        return self.net(x)

    def step(self, stage: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and the stage's metrics for one batch; returns the loss and the logits."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        per_sample = loss if self.hparams.loss_reduction == "mean" else loss / len(y)
        self.metrics[f"{stage}_loss"].update(per_sample.detach(), len(y))
        self.metrics[f"{stage}_acc"].update(logits.detach(), y)
        return loss, logits

    def log_metrics(self, stage: str) -> None:
        """The stage's metrics, logged as torchmetrics objects: Lightning computes them from all of the
        epoch's updates when it ends (synchronised across devices), and resets them. Logged once, as the
        epoch starts, rather than from every step: a `self.log` costs about half a small model's whole step
        (docs/benchmarks.md)."""
        self.log_dict({name: metric for name, metric in self.metrics.items() if name.startswith(stage)},
                      on_step=False, on_epoch=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self.step("train", batch)
        return loss  # Lightning runs backward, the optimizer's step and zero_grad

    def on_train_epoch_start(self) -> None:
        self.log_metrics("train")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # stop at the first NaN or infinite loss, before the epoch's end saves last.ckpt, which so keeps the
        # last finished epoch; under DDP every rank stops together, so none waits for the others
        diverged = not torch.isfinite(outputs["loss"]).item()
        if self.trainer.strategy.reduce_boolean_decision(diverged, all=False):
            raise TrainingDiverged(f"training loss became {outputs['loss'].item()} at step {self.global_step} "
                                   f"(epoch {self.current_epoch + 1}); stopped, and last.ckpt still holds the "
                                   "last finished epoch")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.step("val", batch)

    def on_validation_epoch_start(self) -> None:
        self.log_metrics("val")

    def test_step(self, batch, batch_idx: int) -> None:
        _, logits = self.step("test", batch)
        self.test_confusion.update(logits.argmax(1), batch[1])

    def on_test_epoch_start(self) -> None:
        self.log_metrics("test")

    def on_test_epoch_end(self) -> None:
        self.confusion_matrix = self.test_confusion.compute().cpu()  # summed over all devices
        self.test_confusion.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)  # probabilities, like Keras `predict`

    def configure_optimizers(self) -> Any:
        optimizer = OPTIMIZERS[self.hparams.optimizer](self.parameters(), self.hparams.lr)
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}

    def configure_callbacks(self) -> list[L.Callback]:
        # once per Trainer (its `test` after `fit` asks again), and not over one the Trainer was given
        if any(isinstance(c, SpeedDevices) for c in self.trainer.callbacks):
            return []
        return [SpeedDevices(self.hparams.channels_last)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain values, so `torch.load(..., weights_only=True)` can rebuild the model without Lightning
        checkpoint["mnist_lit"] = self.metadata()
