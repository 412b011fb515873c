"""The LightningModule of the five tutorials: a plain network with Keras' training recipe around it.

Each tutorial (models/cnn.py, ...) is a plain `nn.Sequential` in Keras' layer order and a small subclass
that sets its recipe's defaults. This module is what Keras' `compile` and `fit` do, written in Lightning:
the loss (cross-entropy on logits), the optimizer (Keras' arithmetic, mnist_lit/optim.py), accuracy, and
the training step. The step is Lightning's manual optimization, so that forward, loss, backward and the
optimizer's update are all here to read, as in Keras' own `train_step`.

Three speed devices are called from the step by name, each switched by an argument (`__init__`):
`compiled_steps` (mnist_lit/compiled_step.py), `channels_last`, and the DataModule's `steps_per_execution`
(Keras' option of that name: several optimizer steps per Lightning batch). The thread count is chosen
per epoch by mnist_lit/threads.py. What each buys, measured: docs/benchmarks.md#what-each-speed-device-buys.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lit.compiled_step import CompiledStep, cpp_compiler, worth_compiling
from mnist_lit.data import DATASETS, DatasetName, single_batches, steps_per_epoch
from mnist_lit.errors import UserError
from mnist_lit.optim import KerasAdam, KerasRMSprop, KerasSGD
from mnist_lit.threads import ThreadChoice

Optimizer = Literal["rmsprop", "adam", "sgd"]
# hooks that run around a backward pass or an optimizer step; a compiled step runs no backward of its own,
# so it is used only when nothing hooks onto these
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


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
                 compiled_steps: bool | None = None, channels_last: bool | None = None,
                 global_clipnorm: PositiveFloat | None = None, weights: str | None = None) -> None:
        """
        Args:
            net: the plain network (given by the subclass, not a CLI option).
            optimizer: "rmsprop" (Keras': rho 0.9, eps 1e-7 inside the square root), "adam" (eps 1e-7,
                added where Keras adds it) or "sgd" (plain).
            lr: learning rate.
            loss_reduction: "mean" cross-entropy over the batch (Keras), or "sum" (the TF1 tutorial).
            dataset: the data set trained on; linked from `data.dataset`, it names the classes in exports.
            compiled_steps: run each training step (forward, loss, backward and the optimizer's update) as
                one compiled program (needs a C++ compiler; the first step compiles, seconds). None
                (default): on for CPU fits of at least 10,000 steps of a network of Linear, ReLU and Dropout
                layers, where it was measured faster; False keeps eager steps.
            channels_last: keep convolution weights and inputs channels-last. None (default): on for a
                network with convolutions running on the CPU, where it was measured faster.
            global_clipnorm: clip the gradients' global norm to this before each update, as Keras'
                `global_clipnorm` (Lightning's Trainer flag `gradient_clip_val` is for automatic optimization).
            weights: start from these weights instead of a fresh initialisation: a Keras `.keras` or `.h5`
                file of this tutorial, or an mnist_lit `.ckpt` or TorchScript `.pt`. The CLI reads the file
                once the model exists; from Python, call `mnist_lit.model_files.load_weights(model, path)`.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net", "weights"])
        self.net = net
        self.init_weights()
        # training_step runs backward and the optimizer's update itself, as Keras' train_step does
        self.automatic_optimization = False
        self.weights_file = weights  # read by mnist_lit.model_files.start_from_weights
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # set after `test`, rows = true class
        self.totals: dict[str, torch.Tensor] = {}  # per stage: [summed loss, correct, samples] of the epoch
        self.epoch_row: dict[str, float] = {}  # this epoch's means, written to the loggers as one row
        self.compiled_step: CompiledStep | None = None  # chosen in on_train_start
        self.threads = ThreadChoice()
        self.use_channels_last = False  # chosen in setup, once the device is known

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

    # ------------------------------------------------------------ the network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits (softmax only in `predict_step` and in exports)."""
        if self.use_channels_last and x.dim() == 4:  # same values, another memory order
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def loss_and_totals(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss (Keras' cross-entropy, here on logits) and [summed loss, correct, samples] for
        the epoch's means. No side effects, so a compiled step can hold it."""
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        summed = loss.detach() if self.hparams.loss_reduction == "sum" else loss.detach() * len(y)
        correct = (logits.detach().argmax(1) == y).sum()
        return loss, torch.stack([summed.float(), correct.float(), torch.tensor(float(len(y)), device=y.device)])

    # ------------------------------------------------------------ training

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        losses = []
        for x, y in single_batches(batch):  # several with --data.steps_per_execution, as in Keras
            if self.compiled_step is not None and self.compiled_step.takes(x):
                loss, totals = self.run_compiled_step(optimizer, x, y)
            else:
                loss, totals = self.loss_and_totals(self(x), y)  # forward and loss
                optimizer.zero_grad()
                self.manual_backward(loss)  # backward
                if self.hparams.global_clipnorm:
                    self.clip_gradients(optimizer, self.hparams.global_clipnorm, "norm")
                optimizer.step()  # Keras' update (mnist_lit/optim.py)
            self.add_to_epoch("train", totals)
            losses.append(loss.detach())
            if self.trainer.global_step == self.trainer.max_steps:  # max_steps may end a fit inside a group
                break
        self.stop_if_diverged(losses)
        return loss  # the last step's, for callbacks (Lightning has already seen every update)

    def run_compiled_step(self, optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward and the update as one compiled program (mnist_lit/compiled_step.py). It
        runs as the optimizer step's closure, so Lightning counts the step; the step then finds no
        gradients left to apply. The first call compiles: if that fails and mnist_lit chose compiled
        steps, the fit says so in one line and goes on with eager steps."""
        try:
            return optimizer.step(closure=partial(self.compiled_step, x, y))
        except Exception as error:
            if self.compiled_step.compiled:
                raise
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            if self.hparams.compiled_steps:
                raise UserError(f"{self.name}: compiled_steps=True: the training step did not compile ({reason}); "
                                "drop it to train with eager steps") from error
            self.compiled_step = None
            if self.trainer.is_global_zero:
                print(f"The training step did not compile ({reason}); training with eager steps", flush=True)
            loss, totals = self.loss_and_totals(self(x), y)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            return loss, totals

    def on_train_start(self) -> None:
        self.compiled_step = self.choose_compiled_step()

    def on_train_epoch_start(self) -> None:
        # the thread count, measured on the epoch's first batches (mnist_lit/threads.py)
        self.threads.epoch_start(self.trainer.strategy.root_device.type == "cpu", self.trainer.num_training_batches)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self.threads.batch_start()

    def teardown(self, stage: str) -> None:
        self.threads.end()

    def on_exception(self, exception: BaseException) -> None:  # Lightning skips teardown after an exception
        self.threads.end()

    def choose_compiled_step(self) -> CompiledStep | None:
        """A compiled step when asked for (True), or when mnist_lit's rule picks one (None); eager steps
        where it cannot run: several devices, mixed precision, hooks on backward or the optimizer step."""
        choice, trainer = self.hparams.compiled_steps, self.trainer
        on_cpu = trainer.strategy.root_device.type == "cpu"
        if choice is False or (choice is None and not worth_compiling(self.net, self.fit_steps(), on_cpu)):
            return None
        if on_cpu and cpp_compiler() is None:
            raise UserError(f"{self.name}: compiled_steps=True needs a C++ compiler for torch.compile (g++ not "
                            "found; set CXX, or install g++)")
        hooked = any(is_overridden(h, self, L.LightningModule) for h in (*STEP_HOOKS, "backward")) or any(
            is_overridden(h, cb, L.Callback) for cb in trainer.callbacks for h in STEP_HOOKS)
        plain = trainer.world_size == 1 and trainer.precision == "32-true" and not hooked \
            and not self.hparams.global_clipnorm
        step = CompiledStep.build(self.net, self.optimizers().optimizer, self.loss_and_totals) if plain else None
        if step is None and choice:
            raise UserError(f"{self.name}: compiled_steps=True needs one device, full precision, no global_clipnorm "
                            "and no hooks on backward or the optimizer step; drop it to let mnist_lit choose")
        if step is not None and trainer.is_global_zero:  # the first step takes seconds: say why
            print("Compiling the training step into one program (once, seconds; "
                  "--model.init_args.compiled_steps false trains without)", flush=True)
        return step

    def fit_steps(self) -> float:
        """Optimizer steps the fit will take at most (inf for a fit without an end)."""
        trainer = self.trainer
        if trainer.max_steps > 0:
            return trainer.max_steps
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else math.inf
        return steps_per_epoch(trainer) * epochs

    def stop_if_diverged(self, losses: list[torch.Tensor]) -> None:
        """Stop at the first NaN or infinite loss: one wait for the device per Lightning batch, and every
        rank stops together. It raises before ModelCheckpoint's epoch-end save, so last.ckpt keeps the last
        good epoch."""
        bad = ~torch.isfinite(torch.stack(losses))
        flags = torch.cat([bad.any().float().view(1), bad.float()])
        if self.trainer.world_size > 1:  # so no rank waits in a collective for one that stopped
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        if flags[0] > 0:
            index = int(flags[1:].nonzero()[0]) if flags[1:].any() else 0
            value = losses[index].item() if bad.any() else float("nan")
            step = self.trainer.global_step - len(losses) + index + 1
            raise TrainingDiverged(f"training loss became {value} at step {step} (epoch {self.current_epoch + 1}); "
                                   "stopped, and last.ckpt still holds the last finished epoch")

    # ------------------------------------------------------------ validation, test, predict

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.add_to_epoch("val", self.loss_and_totals(self(x), y)[1])

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.add_to_epoch("test", self.loss_and_totals(logits, y)[1])
        self.test_confusion.update(logits.argmax(1), y)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(1)  # probabilities, like Keras `predict`

    # ------------------------------------------------------------ the epoch's metrics

    def add_to_epoch(self, stage: str, totals: torch.Tensor) -> None:
        """Add a batch's [summed loss, correct, samples]; they stay on the device, so nothing waits."""
        self.totals[stage] = self.totals[stage] + totals if stage in self.totals else totals.clone()

    def log_epoch(self, stage: str) -> None:
        """The epoch's mean loss and accuracy over all ranks, logged once per epoch: a `self.log` costs more
        than a small model's whole step. In a fit they reach the loggers as one row per epoch (see
        on_train_epoch_end); callbacks (checkpoints, early stopping, pruning) read them as they are logged."""
        totals = self.totals.pop(stage, None)
        if totals is None or self.trainer.sanity_checking:  # Lightning's check of a few batches is no epoch
            return
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum") if self.trainer.world_size > 1 else totals
        count = totals[2].clamp(min=1)
        means = {f"{stage}_loss": totals[0] / count, f"{stage}_acc": totals[1] / count}
        # every rank logs the same all-reduced value; sync_dist only keeps Lightning from warning. Each row
        # the loggers get has the optimizer steps taken as its step, as metrics.json counts them
        if self.trainer.state.fn == "fit":  # the loggers get the fit's epochs from write_row
            self.log_dict(means, batch_size=1, sync_dist=True, logger=False)
            self.epoch_row.update({k: float(v) for k, v in means.items()})
        else:  # a logged "step" is the row's step (Lightning's LoggerConnector.log_metrics)
            self.log_dict({**means, "step": float(self.global_step)}, batch_size=1, sync_dist=True)

    def write_row(self) -> None:
        """This epoch's metrics as one row of the loggers' (metrics.csv), train and validation together,
        as Keras' CSVLogger writes them."""
        if self.epoch_row:
            for logger in self.loggers:
                logger.log_metrics({"epoch": self.current_epoch, **self.epoch_row}, step=self.global_step)
            self.epoch_row = {}

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.threads.batch_end()
        # logged on the epoch's last batch, not in on_train_epoch_end, so that callbacks can read the train
        # metrics in their own on_train_epoch_end, which Lightning calls before the module's
        if self.trainer.is_last_batch or 0 < self.trainer.max_steps <= self.trainer.global_step:
            self.log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")  # an epoch cut short (max_time, should_stop) still gets its row
        self.write_row()

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")
        self.confusion_matrix = self.test_confusion.compute().cpu()  # summed over all ranks
        self.test_confusion.reset()

    # ------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        if self.weights_file is not None:  # a Python user's weights= would otherwise be dropped without a word
            raise UserError(f"{self.name}: weights={self.weights_file!r} was not read; from Python, call "
                            "mnist_lit.model_files.load_weights(model, path) instead of passing weights=")
        choice = self.hparams.channels_last
        if choice is None:  # measured faster on the CPU for the cnn; not measured on GPUs
            choice = self.trainer.strategy.root_device.type == "cpu" and any(
                isinstance(m, nn.Conv2d) for m in self.net.modules())
        self.use_channels_last = bool(choice)
        if self.use_channels_last:  # strides only: same values, same state_dict, same exports
            self.net.to(memory_format=torch.channels_last)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp.optimizer == "rmsprop":
            return KerasRMSprop(self.parameters(), lr=hp.lr, rho=0.9, eps=1e-7)
        if hp.optimizer == "adam":
            return KerasAdam(self.parameters(), lr=hp.lr, eps=1e-7)
        return KerasSGD(self.parameters(), lr=hp.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # plain values, so `torch.load(..., weights_only=True)` can rebuild the model without Lightning
        checkpoint["mnist_lit"] = self.metadata()
