"""The LightningModule the five tutorials share: the Keras recipe of network, loss, optimizer and metrics.

Each tutorial is a subclass that hands its plain `nn.Module` (the network a user exports) to
`Tutorial.__init__` and sets the defaults of its published training recipe. How the steps run fast
(manual optimization, step groups, channels-last, compile) is `mnist_lit.engine`'s business.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lit.data import DATASETS, DatasetName
from mnist_lit.engine import Engine
from mnist_lit.errors import UserError
from mnist_lit.optim import KerasAdam, KerasRMSprop

Optimizer = Literal["rmsprop", "adam", "sgd"]


def keras_init(net: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases (torch's xavier_uniform_ uses the same fans)."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Tutorial(Engine):
    """A tutorial's network with its Keras training recipe; `forward` returns logits."""

    name: ClassVar[str]

    def __init__(self, net: nn.Module, optimizer: Optimizer = "rmsprop", lr: PositiveFloat = 1e-3,
                 loss_reduction: Literal["mean", "sum"] = "mean", dataset: DatasetName = "mnist",
                 compile: bool = False, channels_last: bool | None = None, compiled_steps: bool | None = None,
                 weights: str | None = None) -> None:
        """
        Args:
            net: the plain network (given by the subclass, not a CLI option).
            optimizer: "rmsprop" (Keras': rho 0.9, eps 1e-7 inside the square root), "adam" (eps 1e-7,
                added where Keras adds it) or "sgd" (plain).
            lr: learning rate.
            loss_reduction: "mean" cross-entropy over the batch (Keras), or "sum" (the TF1 tutorial).
            dataset: the data set trained on; linked from `data.dataset`, it names the classes in exports.
            compile: run the network through `torch.compile` (needs a C compiler; the first steps compile).
                Off by default: it made the cnn's fit slower on the CPUs measured (docs/benchmarks.md).
            channels_last: keep convolution weights and inputs channels-last. None (default): on for a
                network with convolutions running on the CPU, where it was measured faster; off otherwise.
            compiled_steps: run each training step (forward, loss, backward and the optimizer's update) as
                one compiled program (needs a C compiler; the first step compiles, about 10 s). None
                (default): on for CPU fits of at least 10,000 steps of a network of Linear, ReLU and Dropout
                layers, where it was measured faster; False keeps eager steps.
            weights: start from these weights instead of a fresh initialisation: a Keras `.keras` or `.h5`
                file of this tutorial (e.g. the tutorial's own `model.save`), or an mnist_lit `.ckpt` or
                TorchScript `.pt`. The CLI reads the file once the model exists; from Python, call
                `mnist_lit.model_files.load_weights(model, path)`. Not a hyperparameter: checkpoints hold
                the weights themselves.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net", "weights"])
        self.net = net
        self.init_weights()
        self.weights_file = weights  # read by mnist_lit.model_files.start_from_weights
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # set after `test`, rows = true class
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

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

    def setup(self, stage: str) -> None:
        if self.weights_file is not None:  # a Python user's weights= would otherwise be dropped without a word
            raise UserError(f"{self.name}: weights={self.weights_file!r} was not read; from Python, call "
                            "mnist_lit.model_files.load_weights(model, path) instead of passing weights=")
        super().setup(stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (softmax only in `predict_step` and in exports)."""
        return self.run_net(x)

    def loss_and_stats(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch and [loss sum, correct] for the epoch's means: no side effects, so the
        engine may run it inside one compiled training step (mnist_lit/engine.py)."""
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        summed = loss.detach() if self.hparams.loss_reduction == "sum" else loss.detach() * y.numel()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss, torch.stack([summed.float(), correct.float()])

    def count(self, stage: str, stats: torch.Tensor, samples: int) -> None:
        # the sums accumulate on the device, the sample count on the host: nothing waits
        if stage not in self._sums:
            self._sums[stage], self._counts[stage] = torch.zeros_like(stats), 0
        self._sums[stage] += stats
        self._counts[stage] += samples

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss, stats = self.loss_and_stats(logits, y)
        self.count(stage, stats, y.numel())
        if stage == "test":
            self.test_confusion.update(logits.argmax(1), y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's mean loss and accuracy over all ranks: one `self.log` per metric per epoch,
        because a `self.log` call costs more than a small model's whole step (docs/benchmarks.md#speed)."""
        sums = self._sums.pop(stage, None)
        if sums is None:
            return
        sums = torch.cat([sums, sums.new_tensor([self._counts.pop(stage)])])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if self.trainer.world_size > 1 else sums
        count = sums[2].clamp(min=1)
        # every rank logs the same all-reduced value; sync_dist only keeps Lightning from warning
        self.log(f"{stage}_loss", sums[0] / count, batch_size=1, sync_dist=True)
        self.log(f"{stage}_acc", sums[1] / count, batch_size=1, sync_dist=True, prog_bar=True)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # logging on the epoch's last batch (not in on_train_epoch_end) lets callbacks read the train
        # metrics in their own on_train_epoch_end, which Lightning calls before the module's
        if self.trainer.is_last_batch or 0 < self.trainer.max_steps <= self.trainer.global_step:
            self._log_epoch("train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")  # an epoch cut short (max_time, should_stop): loggers still get it

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
        self.confusion_matrix = self.test_confusion.compute().cpu()  # summed over all ranks
        self.test_confusion.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)  # probabilities, like Keras `predict`

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "rmsprop":
            return KerasRMSprop(self.parameters(), lr=hp.lr, rho=0.9, eps=1e-7)
        if hp.optimizer == "adam":
            return KerasAdam(self.parameters(), lr=hp.lr, eps=1e-7)
        return torch.optim.SGD(self.parameters(), lr=hp.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain values, so `torch.load(..., weights_only=True)` can rebuild the model without Lightning
        checkpoint["mnist_lit"] = self.metadata()
