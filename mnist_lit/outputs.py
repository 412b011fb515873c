"""What a run writes into its output folder, and the one step that finishes a run.

`test_and_save` is Keras' `evaluate` after `fit`: it tests the final weights on the 10,000 test images,
prints Keras' `Test: loss: ... - acc: ...` line, and writes `model.ckpt`, `metrics.json`, the figures and
the TorchScript `model.pt`. `fit` and `import-keras` both end with it. The rest are the Lightning parts
that write files: checkpoints written whole (`AtomicCheckpointIO`), the resolved config (`ConfigSaver`)
and `predict`'s CSV (`PredictionWriter`).
"""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

from mnist_lit import atomic, export, report
from mnist_lit.callbacks import RunRecorder
from mnist_lit.data import MNISTDataModule
from mnist_lit.model_files import write_checkpoint
from mnist_lit.models import Tutorial, count_params

PREVIOUS = "previous.ckpt"  # last.ckpt's predecessor; not "last-...": Lightning resumes the newest last*.ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the checkpoint, then os.replace: a kill leaves the old file
    or the new one. (Lightning's own save goes through fsspec, which writes in the system temp folder
    and moves the file, a copy when that folder is on another file system.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        path = Path(path)
        # the epoch before last.ckpt stays in previous.ckpt, for when last.ckpt is damaged after the fact
        keep = path.with_name(PREVIOUS) if path.name == "last.ckpt" else None
        atomic.write_bytes_from(path, lambda f: torch.save(checkpoint, f), keep_previous=keep)


class EpochCSVLogger(CSVLogger):
    """Lightning's CSVLogger with one row per epoch, training and validation metrics together, as Keras'
    CSVLogger writes them.

    Lightning hands an epoch's validation metrics (when its validation ends) and its training metrics (when
    the epoch ends) to the loggers in two calls with the same step and epoch, and CSVLogger writes a row per
    call. Here a row of validation metrics alone is held until the next call, and joins that call's row when
    it is the same epoch's; `finalize` writes one still held (`validate`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: tuple[dict[str, float], int | None] | None = None

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        held, self.held = self.held, None
        if held is not None and (held[1], held[0].get("epoch")) == (step, metrics.get("epoch")):
            metrics = {**held[0], **metrics}
        elif held is not None:
            super().log_metrics(*held)
        if all(k.startswith("val_") or k == "epoch" for k in metrics):
            self.held = (metrics, step)
        else:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.held is not None:
            super().log_metrics(*self.held)
            self.held = None
        super().finalize(status)


class ConfigSaver(SaveConfigCallback):
    """Writes the resolved config of a `fit` to `<output_dir>/config.yaml`, replacing an older one."""

    def __init__(self, parser, config, output_dir: str = "checkpoints", **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)
        self.output_dir = Path(output_dir)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            atomic.write_text(self.output_dir / self.config_filename, self.parser.dump(self.config, skip_none=False))


class PredictionWriter(BasePredictionWriter):
    """`predict`'s probabilities of the test images as `predictions.csv`: index, label, predicted class,
    probability, in the test set's order whatever the number of processes."""

    def __init__(self, path: Path) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        probs = torch.cat(predictions).cpu() if predictions else torch.zeros(0, len(pl_module.classes))
        world = trainer.world_size
        if world > 1:  # each rank predicted images rank, rank + world, ...: put the shares back in order
            shares: list[Any] = [None] * world
            torch.distributed.all_gather_object(shares, probs)
            probs = torch.empty(sum(len(s) for s in shares), probs.shape[1])
            for rank, share in enumerate(shares):
                probs[rank::world] = share
        if not len(probs) or not trainer.is_global_zero:
            return
        labels = trainer.datamodule.test_set()[1]
        confidence, predicted = probs.max(1)
        classes = pl_module.classes
        lines = ["index,label,predicted,probability"]
        for i, (p, c) in enumerate(zip(predicted.tolist(), confidence.tolist())):
            lines.append(f"{i},{classes[int(labels[i])]},{classes[p]},{c:.6f}")
        atomic.write_text(self.path, "\n".join(lines) + "\n")
        print(f"Saved {len(probs)} predictions to {self.path}", flush=True)


def print_evaluation(trainer: L.Trainer, stage: str, metrics: dict[str, Any]) -> None:
    """Keras `evaluate`'s line: `Test: loss: 0.0312 - acc: 0.9901`."""
    if trainer.is_global_zero:
        title = {"test": "Test", "val": "Validation"}[stage]
        print(f"{title}: loss: {float(metrics[f'{stage}_loss']):.4f} - acc: {float(metrics[f'{stage}_acc']):.4f}",
              flush=True)


def run_summary(trainer: L.Trainer, model: Tutorial, results: dict[str, float]) -> dict[str, Any]:
    """metrics.json: the test results and the run that led to them."""
    recorder = next((c for c in trainer.callbacks if isinstance(c, RunRecorder)), RunRecorder())
    cm = model.confusion_matrix
    return {
        "tutorial": model.name,
        "dataset": model.hparams.dataset,
        "test_acc": results["test_acc"],
        "test_loss": results["test_loss"],
        "test_samples": int(cm.sum()),
        "per_class_acc": dict(zip(model.classes, report.per_class_accuracy(cm))),
        "params": count_params(model.net),
        "epochs": len(recorder.history),
        "steps": trainer.global_step,
        "epoch_seconds": recorder.epoch_seconds,
        "history": recorder.history,
        "confusion_matrix": cm.tolist(),
        "device": str(trainer.strategy.root_device),
        "world_size": trainer.world_size,
        "versions": {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
    }


def save_model(out: Path, model: Tutorial, epoch: int = 0, global_step: int = 0, **meta: Any) -> tuple[Path, Path]:
    """model.ckpt (the weights, no optimizer state) and its TorchScript export model.pt."""
    write_checkpoint(out / "model.ckpt", model, epoch, global_step, **meta)
    return out / "model.ckpt", export.export(out / "model.ckpt", "torchscript", out / "model.pt")


def _say_scripted(path: Path) -> None:
    print(f"TorchScript model for torch.jit.load: {path}", flush=True)


def save_untested(out: Path, model: Tutorial, **meta: Any) -> None:
    """model.ckpt and model.pt alone, with their lines: weights that could not be tested here."""
    checkpoint, scripted = save_model(out, model, **meta)
    print(f"Saved {checkpoint}", flush=True)
    _say_scripted(scripted)


def test_and_save(trainer: L.Trainer, model: Tutorial, datamodule: MNISTDataModule, out: Path, **meta: Any) -> None:
    """Keras' `evaluate` after `fit`: test the final weights, then (on rank 0) write what the run leaves.

    `meta` joins the checkpoint's metadata and metrics.json (import-keras: the file it came from).
    """
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    print_evaluation(trainer, "test", results)
    if trainer.fast_dev_run or not trainer.is_global_zero:  # a smoke run must not overwrite a real run's outputs
        return
    summary = {**run_summary(trainer, model, results), **meta}
    checkpoint, scripted = save_model(out, model, trainer.current_epoch, trainer.global_step, **meta)
    atomic.write_json(out / "metrics.json", summary)
    print(f"Saved {checkpoint} and {out / 'metrics.json'}", flush=True)
    images, labels = datamodule.test_set()
    figures = report.write_report(out, copy.deepcopy(model.net).cpu(), images, labels)
    print("Figures: " + ", ".join(str(p) for p in figures), flush=True)
    _say_scripted(scripted)
