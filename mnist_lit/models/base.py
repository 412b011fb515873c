"""The LightningModule the five tutorials share: steps, metrics, Keras initialisation and optimizers.

Each tutorial is a subclass that hands its plain `nn.Module` (the network a user exports) to
`Tutorial.__init__` and sets the defaults of its published training recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from torch import nn
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lit.data import DATASETS, DatasetName, is_group
from mnist_lit.errors import UserError
from mnist_lit.optim import KerasAdam, KerasRMSprop

Optimizer = Literal["rmsprop", "adam", "sgd"]

# hooks Lightning runs around each backward and optimizer step; when nothing overrides them, a step
# straight through torch does the same work without Lightning's per-step dispatch
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
# set to "1" by `import lightning`; every torch optimizer step then asks NVML whether CUDA is there
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def keras_init(net: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels, zero biases (torch's xavier_uniform_ uses the same fans)."""
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an mnist_lit checkpoint with `weights_only=True`, or say in one line why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of another kind, random bytes...
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise UserError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {detail})") from None
    if not isinstance(checkpoint, dict) or "mnist_lit" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{path}: not an mnist_lit checkpoint (no model metadata in it)")
    return checkpoint


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


class Tutorial(L.LightningModule):
    """A tutorial's network with its Keras training recipe; `forward` returns logits."""

    name: ClassVar[str]

    def __init__(self, net: nn.Module, optimizer: Optimizer = "rmsprop", lr: PositiveFloat = 1e-3,
                 loss_reduction: Literal["mean", "sum"] = "mean", dataset: DatasetName = "mnist",
                 compile: bool = False, channels_last: bool | None = None, weights: str | None = None) -> None:
        """
        Args:
            net: the plain network (given by the subclass, not a CLI option).
            optimizer: "rmsprop" (Keras': rho 0.9, eps 1e-7 inside the square root), "adam" (eps 1e-7,
                added where Keras adds it) or "sgd" (plain).
            lr: learning rate.
            loss_reduction: "mean" cross-entropy over the batch (Keras), or "sum" (the TF1 tutorial).
            dataset: the data set trained on; linked from `data.dataset`, it names the classes in exports.
            compile: run the network through `torch.compile` (needs a C compiler; the first steps compile).
            channels_last: keep convolution weights and inputs channels-last. None (default): on for a
                network with convolutions running on the CPU, where it was measured faster; off otherwise.
            weights: start from these weights instead of a fresh initialisation: a Keras `.keras` or `.h5`
                file of this tutorial (e.g. the tutorial's own `model.save`), or an mnist_lit `.ckpt` or
                TorchScript `.pt`. Not a hyperparameter: checkpoints hold the weights themselves.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["net", "weights"])
        self.net = net
        self.init_weights()
        if weights is not None:
            self.load_weights(weights)
        self.test_confusion = MulticlassConfusionMatrix(num_classes=10, validate_args=False)
        self.confusion_matrix: torch.Tensor | None = None  # set after `test`, rows = true class
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._direct_steps = False  # set per fit in on_train_start
        self._channels_last = False  # set in setup, once the device is known
        self._nvml_check: str | None = None  # Lightning's NVML setting before a fit, put back after it

    def init_weights(self) -> None:
        """Keras' initialisation of a fresh network (glorot-uniform kernels, zero biases)."""
        keras_init(self.net)

    def load_weights(self, path: str | Path) -> None:
        """Copy in the weights of a Keras, checkpoint or TorchScript file holding this same tutorial."""
        from mnist_lit.export import read_weights

        tutorial, weights = read_weights(path)
        if tutorial != self.name:
            raise UserError(f"{path}: holds the {tutorial} tutorial's network, not {self.name}'s")
        try:
            self.net.load_state_dict(weights)
        except RuntimeError as e:
            raise UserError(f"{path}: weights do not fit the {self.name} network ({str(e).splitlines()[0]})") from None

    @property
    def classes(self) -> tuple[str, ...]:
        return DATASETS[self.hparams.dataset].classes

    def setup(self, stage: str) -> None:
        on_cpu = self.trainer.strategy.root_device.type == "cpu"
        choice = self.hparams.get("channels_last")
        if choice is None:
            choice = on_cpu and any(isinstance(m, nn.Conv2d) for m in self.net.modules())
        self._channels_last = bool(choice)
        if self._channels_last:  # strides only: same values, same state_dict, same exports
            self.net.to(memory_format=torch.channels_last)
        if stage == "fit":
            self._skip_nvml_probe(on_cpu)
        if self.hparams.compile and not hasattr(self, "_compiled"):
            # kept outside the module tree: checkpoints and exports keep the plain network's names
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def _skip_nvml_probe(self, on_cpu: bool) -> None:
        """With no CUDA device at all, each optimizer step of a CUDA build of torch re-probes NVML (about
        70 us: a tenth of a softmax_regression step) because Lightning asked for NVML-based checks, which
        only matter once CUDA can start. Drop the request for this fit; `teardown` puts it back."""
        self._nvml_check = os.environ.get(NVML_CHECK)
        if on_cpu and self._nvml_check == "1" and torch.cuda.device_count() == 0:
            del os.environ[NVML_CHECK]

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._nvml_check is not None:
            os.environ[NVML_CHECK] = self._nvml_check

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return getattr(self, "_compiled", self.net)(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, reduction=self.hparams.loss_reduction)
        preds = logits.argmax(1)
        summed = loss.detach() if self.hparams.loss_reduction == "sum" else loss.detach() * y.numel()
        # [loss sum, correct] accumulate on the device, the sample count on the host: nothing waits
        if stage not in self._sums:
            self._sums[stage], self._counts[stage] = torch.zeros(2, device=logits.device), 0
        self._sums[stage] += torch.stack([summed.float(), (preds == y).sum().float()])
        self._counts[stage] += y.numel()
        if stage == "test":
            self.test_confusion.update(preds, y)
        return loss

    def _log_epoch(self, stage: str) -> None:
        """Log the epoch's mean loss and accuracy over all ranks: one `self.log` per metric per epoch.

        (`self.log` costs about 0.8 ms a call in Lightning 2.6, several times a small model's step.)
        """
        sums = self._sums.pop(stage, None)
        if sums is None:
            return
        sums = torch.cat([sums, sums.new_tensor([self._counts.pop(stage)])])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if self.trainer.world_size > 1 else sums
        count = sums[2].clamp(min=1)
        # every rank logs the same all-reduced value; sync_dist only keeps Lightning from warning
        self.log(f"{stage}_loss", sums[0] / count, batch_size=1, sync_dist=True)
        self.log(f"{stage}_acc", sums[1] / count, batch_size=1, sync_dist=True, prog_bar=True)

    @property
    def automatic_optimization(self) -> bool:
        """Manual (fewer hooks per step, through Lightning's own optimizer and backward) unless the run
        asks for gradient clipping or accumulation, which only Lightning's automatic loop provides."""
        trainer = self._trainer
        return trainer is None or bool(trainer.gradient_clip_val or trainer.accumulate_grad_batches != 1)

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:  # LightningModule.__init__ assigns it
        pass

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:  # also outside a Trainer: just the loss
            loss = self._step(batch, "train")
            if self._trainer is not None:
                self._check_finite([loss.detach()], self.trainer.global_step)
            return loss
        first_step = self.trainer.global_step
        optimizer = self.optimizers()
        max_steps = self.trainer.max_steps
        budget = max_steps - first_step if max_steps > 0 else None
        direct = self._direct_steps
        losses = []
        for micro in batch if is_group(batch) else [batch]:
            if budget is not None and len(losses) >= budget:
                break
            loss = self._step(micro, "train")
            if direct:  # the same updates as below, without Lightning's per-step hook dispatch
                optimizer._on_before_step()  # the manual loop's step counter (global_step, max_steps)
                optimizer.optimizer.zero_grad()
                loss.backward()
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()  # counts the step and applies precision plugins and hooks
            losses.append(loss.detach())
        self._check_finite(losses, first_step)
        return loss

    def on_train_start(self) -> None:
        self._direct_steps = self._steps_need_no_lightning()

    def _steps_need_no_lightning(self) -> bool:
        """True when Lightning's backward and optimizer-step wrappers would add nothing but time.

        That is one device, full precision or bf16 autocast (no gradient scaler), no profiler, and no
        callback or module code hooked onto backward or the optimizer step. Otherwise every step goes
        through `manual_backward` and `LightningOptimizer.step`, so those hooks run as usual.
        """
        trainer = self.trainer
        plugin = trainer.precision_plugin
        plain_precision = type(plugin) is Precision or (type(plugin) is MixedPrecision and plugin.scaler is None)
        hooked = any(is_overridden(h, self, L.LightningModule) for h in (*STEP_HOOKS, "backward")) or any(
            is_overridden(h, cb, L.Callback) for cb in trainer.callbacks for h in STEP_HOOKS)
        return (type(trainer.strategy) is SingleDeviceStrategy and plain_precision
                and isinstance(trainer.profiler, PassThroughProfiler) and not hooked)

    def _check_finite(self, losses: list[torch.Tensor], first_step: int) -> None:
        """Stop at the first NaN/inf loss: one host sync per group of steps, all ranks stop together.

        It raises before ModelCheckpoint's epoch-end save, so last.ckpt keeps the last good epoch.
        """
        bad = ~torch.isfinite(torch.stack(losses))
        flags = torch.cat([bad.any().float().view(1), bad.float()])
        if self.trainer.world_size > 1:  # so no rank waits in a collective for one that stopped
            flags = self.trainer.strategy.reduce(flags, reduce_op="sum")
        if flags[0] > 0:
            index = int(flags[1:].nonzero()[0]) if flags[1:].any() else 0
            value = losses[index].item() if bad.any() else float("nan")
            raise TrainingDiverged(
                f"training loss became {value} at step {first_step + index + 1} (epoch {self.current_epoch + 1}); "
                "stopped, and last.ckpt still holds the last finished epoch"
            )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # logging on the epoch's last batch (not in on_train_epoch_end) lets callbacks read the train
        # metrics in their own on_train_epoch_end, which Lightning calls before the module's
        loop = self.trainer.fit_loop.epoch_loop
        if loop.batch_progress.is_last_batch or 0 < self.trainer.max_steps <= self.trainer.global_step:
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
        checkpoint["mnist_lit"] = {"tutorial": self.name, "dataset": self.hparams.dataset,
                                   "classes": list(self.classes), "params": count_params(self.net)}
