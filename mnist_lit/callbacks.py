"""What a run shows and keeps: a Keras-style epoch line, the per-epoch record of the run, the interrupt line,
and Lightning's messages that tell a user nothing, silenced."""

from __future__ import annotations

import logging
import math
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
import torch
from tqdm import tqdm


EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


def steps_per_epoch(trainer: L.Trainer) -> int | float:
    """Optimizer steps in an epoch, as Keras counts them: with accumulate_grad_batches k, one per k batches
    (and one for a remainder at the epoch's end, as Lightning steps then)."""
    batches = trainer.num_training_batches
    return math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches) else batches


def epoch_metrics(trainer: L.Trainer) -> dict[str, float]:
    """This epoch's logged means. Every rank must call it: reading them runs the cross-rank reduction."""
    metrics = trainer.callback_metrics
    return {k: float(metrics[k]) for k in EPOCH_KEYS if k in metrics}


def format_metrics(metrics: dict[str, float]) -> str:
    return " - ".join(f"{k.removeprefix('train_')}: {v:.4f}" for k, v in metrics.items())


class _Bar(tqdm):
    """tqdm's bar with Keras' milliseconds per step."""

    @property
    def format_dict(self) -> dict[str, Any]:
        d = super().format_dict
        d["ms_per_step"] = 1000 * d["elapsed"] / max(d["n"] - d["initial"], 1)
        return d


class EpochLine(ProgressBar):
    """One line per epoch, as Keras prints: `Epoch 3/10 - 469/469 - 4.1s - loss: ... - acc: ...`.

    On a terminal a live bar (tqdm) runs while the epoch trains, as Keras' does: steps done, elapsed time,
    ETA and milliseconds per step, redrawn at most 4 times a second. It reads no metric mid-epoch, so it
    never makes the device wait. Elsewhere (a log file, a pipe) only the epoch lines are printed.
    """

    BAR = "{desc} - {n_fmt}/{total_fmt} [{bar}] {elapsed} ETA {remaining} - {ms_per_step:.0f}ms/step"

    def __init__(self, refresh_seconds: float = 0.25) -> None:
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self._enabled = True
        self._live = sys.stdout.isatty()
        self._start = 0.0
        self._first_step = 0
        self._bar: _Bar | None = None
        self._threads: int | None = None  # the last epoch's thread count

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @staticmethod
    def _planned_epochs(trainer: L.Trainer) -> int | None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        per_epoch = steps_per_epoch(trainer)
        if trainer.max_steps > 0 and per_epoch and math.isfinite(per_epoch):  # e.g. the TF1 tutorial's 2000 steps
            by_steps = math.ceil(trainer.max_steps / per_epoch)
            epochs = min(epochs, by_steps) if epochs else by_steps
        return epochs

    def _prefix(self, trainer: L.Trainer) -> str:
        return f"Epoch {trainer.current_epoch + 1}/{self._planned_epochs(trainer) or '?'}"

    def _batches(self, trainer: L.Trainer) -> str:
        # optimizer steps, as Keras counts them; not total_train_batches, which shrinks near max_steps
        return f"{trainer.global_step - self._first_step}/{steps_per_epoch(trainer)}"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._threads = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self._first_step = trainer.global_step
        if self._enabled and self._live and trainer.is_global_zero:
            total = steps_per_epoch(trainer)
            # the terminal's width, at most 100 columns; a pseudo-terminal may report a size of 0 x 0, which
            # would make tqdm draw nothing
            size = shutil.get_terminal_size()
            self._bar = _Bar(total=int(total) if math.isfinite(total) else None, desc=self._prefix(trainer),
                             unit="step", file=sys.stdout, leave=False, ascii=".=", bar_format=self.BAR,
                             mininterval=self.refresh_seconds, ncols=min(size.columns or 100, 100),
                             nrows=size.lines or 24)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._bar is not None:  # tqdm redraws only when refresh_seconds have passed
            self._bar.update(trainer.global_step - self._first_step - self._bar.n)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # leave=False: the line is cleared for what comes next
            self._bar = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = epoch_metrics(trainer)  # on every rank, see epoch_metrics
        self._close_bar()
        if not (self._enabled and trainer.is_global_zero):
            return
        seconds = time.perf_counter() - self._start
        line = f"{self._prefix(trainer)} - {self._batches(trainer)} - {seconds:.1f}s - {format_metrics(metrics)}"
        threads, self._threads = self._threads, torch.get_num_threads()
        if threads is not None and threads != self._threads:  # the count each epoch measured (threads.py)
            line += f" - threads: {self._threads}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close_bar()


class RunRecorder(Callback):
    """Each epoch's metrics and wall seconds, kept inside the checkpoints so a resumed run keeps them."""

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before ModelCheckpoint's hook, so last.ckpt already holds this epoch
        entry = {"epoch": trainer.current_epoch + 1, "seconds": round(time.perf_counter() - self._start, 4),
                 "threads": torch.get_num_threads()}  # what the epoch ran on after its trial (threads.py)
        entry.update(epoch_metrics(trainer))
        self.history = [e for e in self.history if e["epoch"] < entry["epoch"]] + [entry]

    @property
    def epoch_seconds(self) -> list[float]:
        return [e["seconds"] for e in self.history]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class InterruptNotice(Callback):
    """On Ctrl-C or SIGTERM, one line saying what was kept and how to continue.

    Lightning then exits with status 1 after Ctrl-C. SIGTERM (from `kill`, SLURM, Kubernetes, systemd)
    only sets a flag. Training stops at the end of the step under way, evaluation at its end, and the
    command exits with 143 (128 + SIGTERM, in `mnist_lit.cli.main`) so a scheduler does not record success;
    last.ckpt keeps the last finished epoch. Under DDP the ranks agree on the flag after every step (any
    rank's SIGTERM stops all of them, at the same step). This replaces Lightning's own SIGTERM handler,
    which runs a collective inside the signal handler and so deadlocks ranks that are in another one.
    """

    def __init__(self) -> None:
        self.sigterm = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.sigterm = True

    def _listen(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # each trainer stage installs Lightning's handler as it starts (and restores the old one at its end)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    on_train_start = on_validation_start = on_test_start = on_predict_start = _listen

    def _stop_if_asked(self, trainer: L.Trainer, *args: Any) -> None:
        stop = self.sigterm  # every rank reaches this point as often as every other: the vote cannot hang
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            raise SIGTERMException

    # after every training step; evaluation batches may differ in number between ranks: they vote at the end
    on_train_batch_end = on_validation_end = on_test_end = on_predict_end = _stop_if_asked

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or not trainer.is_global_zero:
            return
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        last = str(Path(folder) / "last.ckpt") if folder and (Path(folder) / "last.ckpt").is_file() else ""
        kept = f"{last} holds epoch {trainer.current_epoch}" if last else "no epoch finished, so no checkpoint"
        args, skip = [], False
        for arg in sys.argv[1:]:  # the same command without its --ckpt_path (given as one or two words)
            if skip or arg.startswith("--ckpt_path"):
                skip = arg == "--ckpt_path" and not skip
                continue
            args.append(arg)
        again = " ".join(["python -m mnist_lit", *args, "--ckpt_path last"]) if last else "the same command"
        where = (f"Stopped by SIGTERM after epoch {trainer.current_epoch}" if isinstance(exception, SIGTERMException)
                 else f"\nInterrupted in epoch {trainer.current_epoch + 1}")
        print(f"{where}: {kept}; continue with: {again}", file=sys.stderr, flush=True)


# Lightning messages that are expected in every run of this CLI and tell the user nothing
QUIET_WARNINGS = (
    r"Total length of `list` across ranks is zero",  # validation is off when data.val is "none"
    r"Checkpoint directory .* exists and is not empty",  # a rerun replaces last.ckpt on purpose
    r"The number of training batches .* is smaller than the logging interval",  # metrics are per epoch
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch >= 2.10
    r'.*ckpt_path="last"\) is set, but there is no last checkpoint',  # before_fit says so in our words
)


def _no_zero_flops(record: logging.LogRecord) -> bool:
    """Lightning's text model summary without its "0 Total Flops" line: FLOPs are counted only for a model
    with an example input, so the 0 is no measurement (a real count is kept)."""
    if isinstance(record.msg, str) and not record.args:
        record.msg = "\n".join(line for line in record.msg.split("\n")
                               if not (line.endswith("Total Flops") and line.split()[0] == "0"))
    return True


# Lines Lightning prints in every run that ask nothing of the user (the rest, its warnings about the user's
# own settings and "GPU available: True, used: False" among them, are let through):
NO_ACTION = (
    "litlogger",  # the Tip advertises a service
    "Detected KeyboardInterrupt",  # InterruptNotice's line says what was kept and how to continue
    "`Trainer.fit` stopped: `max_epochs=", "`Trainer.fit` stopped: `max_steps=",  # the epoch lines showed it
    "Seed set to",  # the seed is in config.yaml (seed_everything) and the same every run unless changed
)
NO_DEVICE = re.compile(r"^(GPU|TPU|HPU|IPU) available: False")  # a device that is not there


def needs_no_action(message: str) -> bool:
    return any(s in message for s in NO_ACTION) or bool(NO_DEVICE.match(message))


def quiet_lightning() -> None:
    """Silence what Lightning prints in every run that a user cannot act on (QUIET_WARNINGS, the litlogger
    tip, a FLOPs total of 0); warnings about the user's own settings stay."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    summary = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    if _no_zero_flops not in summary.filters:
        summary.addFilter(_no_zero_flops)
    no_ads = logging.Filter()
    no_ads.filter = lambda record: not needs_no_action(record.getMessage())
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).addFilter(no_ads)
    # "[rank: 0] Received SIGTERM: 15": InterruptNotice says what happened and how to continue instead
    sigterm = logging.Filter()
    sigterm.filter = lambda record: "Received SIGTERM" not in record.getMessage()
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(sigterm)
