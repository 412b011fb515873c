"""The LightningModule the five tutorials share: steps, metrics, Keras initialisation and optimizers.

Each tutorial is a subclass that hands its plain `nn.Module` (the network a user exports) to
`Tutorial.__init__` and sets the defaults of its published training recipe.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lit.data import DATASETS, DatasetName

Optimizer = Literal["rmsprop", "adam", "sgd"]


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
                 loss_reduction: Literal["mean", "sum"] = "mean", dataset: DatasetName = "mnist") -> None:
        """
        Args:
            net: the plain network (given by the subclass, not a CLI option).
            optimizer: "rmsprop" (Keras: rho 0.9, eps 1e-7), "adam" (eps 1e-7) or "sgd" (plain).
            lr: learning rate.
            loss_reduction: "mean" cross-entropy over the batch (Keras), or "sum" (the TF1 tutorial).
            dataset: the data set trained on; linked from `data.dataset`, it names the classes in exports.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        keras_init(self.net)
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # set after `test`, rows = true class

    @property
    def classes(self) -> tuple[str, ...]:
        return DATASETS[self.hparams.dataset].classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        n = y.numel()
        preds = logits.argmax(1)
        # epoch means accumulate on the device; nothing here waits for the host
        mean_loss = loss.detach() / n if self.hparams.loss_reduction == "sum" else loss.detach()
        self.log(f"{stage}_loss", mean_loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{stage}_acc", (preds == y).float().mean(), on_step=False, on_epoch=True,
                 batch_size=n, sync_dist=True, prog_bar=True)
        if stage == "test":
            self.test_confusion.update(preds, y)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.confusion_matrix = self.test_confusion.compute().cpu()  # summed over all ranks
        self.test_confusion.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)  # probabilities, like Keras `predict`

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "rmsprop":
            return torch.optim.RMSprop(self.parameters(), lr=hp.lr, alpha=0.9, eps=1e-7)
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, eps=1e-7)
        return torch.optim.SGD(self.parameters(), lr=hp.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain values, so `torch.load(..., weights_only=True)` can rebuild the model without Lightning
        checkpoint["mnist_lit"] = {"tutorial": self.name, "dataset": self.hparams.dataset,
                                   "classes": list(self.classes), "params": count_params(self.net)}
