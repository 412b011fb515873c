"""The Lightning CLI: `fit`, `validate`, `test` and `predict` over the five tutorials.

On top of a stock `LightningCLI` it adds: bare config names (`--config cnn.yaml` finds `configs/cnn.yaml`),
`data.dataset` linked into the model (exports know their class names), all outputs in
`checkpoints/<tutorial>/`, and after `fit` a Keras-style `evaluate` on the 10,000 test images.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import logging
import os
import platform
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

# Lightning 2.6 still calls jsonargparse APIs deprecated in 4.49; users cannot act on those warnings
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnist_lit import atomic, export, report
from mnist_lit.callbacks import EpochLine, InterruptNotice, RunRecorder
from mnist_lit.data import MNISTDataModule
from mnist_lit.errors import UserError
from mnist_lit.models import Tutorial, count_params
from mnist_lit.models.base import read_checkpoint

CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parent.parent / "configs")
CONFIG_FLAGS = ("--config", "-c")
PREVIOUS = "previous.ckpt"  # last.ckpt's predecessor; not "last-...": Lightning resumes the newest last*.ckpt


def resolve_config(value: str) -> str:
    """A config path as given if it exists, else the same name (with or without .yaml) under configs/."""
    if Path(value).exists() or value.startswith(("{", "[")) or ":" in value:
        return value
    for folder in CONFIG_DIRS:
        for name in (value, f"{value}.yaml"):
            if (folder / name).is_file():
                return str(folder / name)
    return value  # jsonargparse reports it as missing


def resolve_config_args(argv: list[str]) -> list[str]:
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_FLAGS and eq:
            out.append(f"{flag}={resolve_config(value)}")
        elif arg in CONFIG_FLAGS:
            out.append(arg)
            nxt = next(it, None)
            if nxt is not None:
                out.append(resolve_config(nxt))
        else:
            out.append(arg)
    return out


# Lightning messages that are expected in every run of this CLI and tell the user nothing
QUIET_WARNINGS = (
    r"Total length of `list` across ranks is zero",  # validation is off when data.val is "none"
    r"Checkpoint directory .* exists and is not empty",  # a rerun replaces last.ckpt on purpose
    r"The number of training batches .* is smaller than the logging interval",  # metrics are per epoch
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning 2.6 on torch >= 2.10
    r'.*ckpt_path="last"\) is set, but there is no last checkpoint',  # before_fit says so in our words
)


def quiet_lightning() -> None:
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    no_ads = logging.Filter()
    # the Tip advertises a service; the KeyboardInterrupt line is replaced by InterruptNotice's
    # and "`Trainer.fit` stopped: `max_epochs=10` reached." repeats what the epoch lines showed
    no_ads.filter = lambda record: not any(s in record.getMessage() for s in (
        "litlogger", "Detected KeyboardInterrupt", "`Trainer.fit` stopped: `max_epochs=", "`Trainer.fit` stopped: `max_steps="))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(no_ads)
    # "[rank: 0] Received SIGTERM: 15": InterruptNotice says what happened and how to continue instead
    sigterm = logging.Filter()
    sigterm.filter = lambda record: "Received SIGTERM" not in record.getMessage()
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(sigterm)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the checkpoint, then os.replace: a kill leaves the old file
    or the new one. (Lightning's own save goes through fsspec, which writes in the system temp folder
    and moves the file, a copy when that folder is on another file system.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        path = Path(path)
        # the epoch before last.ckpt stays in previous.ckpt, for when last.ckpt is damaged after the fact
        keep = path.with_name(PREVIOUS) if path.name == "last.ckpt" else None
        atomic.write_bytes_from(path, lambda f: torch.save(checkpoint, f), keep_previous=keep)


class ConfigSaver(SaveConfigCallback):
    """Writes the resolved config of a `fit` to `<output_dir>/config.yaml`, replacing an older one."""

    def __init__(self, parser, config, output_dir: str = "checkpoints", **kwargs: Any) -> None:
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)
        self.output_dir = Path(output_dir)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            atomic.write_text(self.output_dir / self.config_filename, self.parser.dump(self.config, skip_none=False))


class OneLineErrors(LightningArgumentParser):
    """A bad flag or config value ends in one line naming it and the problem, exit status 2, instead of
    jsonargparse's usage of every option (MNIST_LIT_VERBOSE=1 shows that)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("MNIST_LIT_VERBOSE") == "1":
            super().error(message, ex)  # inside jsonargparse's own parsing: it catches this and goes on
        print(f"mnist_lit: error: {flag_problem(message)} (--help lists the options)", file=sys.stderr)
        raise SystemExit(2)


def flag_problem(message: str) -> str:
    """jsonargparse's message as one line, the flag first: for a model's argument, the setting and the
    tutorial's rule (not the union of types it was tried against)."""
    from mnist_lit.models import TUTORIALS

    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    nested = re.search(r"Problem with given class_path '[\w.]*?(\w+)': Parser key \"([^\"]+)\": (.*?)"
                       r"(?: - Expected a <class 'NoneType'>.*)?$", text)
    if nested:
        return f"--model.init_args.{nested[2]} ({nested[1]}): {nested[3]}"
    unknown = re.search(r'^Parser key "model": .*Given value: (\S+)$', text)
    if unknown and "Expected a dot import path" in text:
        names = ", ".join(sorted(type(TUTORIALS[t]()).__name__ for t in TUTORIALS))
        return f"--model {unknown[1]}: not a tutorial; one of {names}"
    return re.sub(r'^Parser key "([^"]+)": ', r"--\1: ", text)


class MnistCLI(LightningCLI):
    """`python -m mnist_lit {fit,validate,test,predict} --config configs/<tutorial>.yaml [--trainer.* ...]`."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            Tutorial, MNISTDataModule, subclass_mode_model=True, parser_class=OneLineErrors,
            save_config_callback=ConfigSaver, save_config_kwargs={"overwrite": True},
            seed_everything_default=0, auto_configure_optimizers=False,
            parser_kwargs={"description": __doc__.splitlines()[0]},
            args=args, run=run, **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=Optional[str], default=None,
                            help="Where checkpoints, config.yaml and metrics.json go (default: checkpoints/<tutorial>).")
        parser.link_arguments("data.dataset", "model.init_args.dataset")

    def instantiate_classes(self) -> None:
        # jsonargparse reports an error raised in a model's or data module's __init__ (a bad weights
        # file, say) as a ValueError about Union subtypes, keeping the original as its cause: show that
        try:
            super().instantiate_classes()
        except ValueError as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    def _setting(self, key: str) -> Any:
        """A value of the parsed config, also while parsing (before `self.subcommand` is set) and with run=False."""
        subcommand = self.config.get("subcommand")
        return (self.config[subcommand] if subcommand else self.config).get(key)

    @property
    def output_dir(self) -> Path:
        """--output_dir, else checkpoints/<tutorial> (known from the config before the model exists)."""
        return Path(self._setting("output_dir") or Path("checkpoints") / (self._config_tutorial() or self.model.name))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        out = self.output_dir
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        given = config.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        if not config.get("plugins"):
            config["plugins"] = [AtomicCheckpointIO()]
        if config.get("enable_model_summary") is None:
            config["enable_model_summary"] = False  # before_fit prints the Keras-style summary instead
        if config.get("default_root_dir") is None:
            config["default_root_dir"] = str(out)
        if config.get("logger") in (None, True):
            config["logger"] = [CSVLogger(out, name="logs")]
            if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
                config["logger"].append(TensorBoardLogger(out, name="tensorboard"))
        if config.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in given):
            # last.ckpt after every epoch, for resuming (Lightning 2.6 writes save_last's file at an epoch
            # end only alongside a top-k file, so the single kept "top-k" file is named last.ckpt instead);
            # the tested model is saved as model.ckpt after fit
            callbacks.append(ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, enable_version_counter=False))
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks.append(EpochLine())
        callbacks += [RunRecorder(), InterruptNotice()]
        self.save_config_kwargs["output_dir"] = str(out)
        return self._instantiate_trainer(config, callbacks)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyperparameters (model class included) while parsing; a file that
        # is not an mnist_lit checkpoint must fail here in one line, not in torch.load's traceback
        given = self._setting("ckpt_path")
        self._missing_last: Path | None = None  # --ckpt_path last with nothing to resume: before_fit says so
        if given == "last" and (self._setting("output_dir") or self._config_tutorial()):
            last = self.output_dir / "last.ckpt"  # where Lightning will look: check that file here
            if not last.is_file():
                self._missing_last = last
            else:
                checkpoint = self._read_last(last)
                self._check_tutorial(str(last), checkpoint)
                self._check_epochs(str(last), checkpoint)
        elif given and given not in ("best", "hpc"):
            checkpoint = read_checkpoint(given)
            if "_class_path" not in checkpoint.get("hyper_parameters", {}):
                raise UserError(f"{given}: records no model class (not saved by this CLI); it holds a "
                                f"{checkpoint['mnist_lit']['tutorial']} model: load it with "
                                "mnist_lit.models.TUTORIALS[name].load_from_checkpoint")
            self._check_tutorial(given, checkpoint)
            self._check_epochs(given, checkpoint)
        super()._parse_ckpt_path()

    @staticmethod
    def _read_last(last: Path) -> dict[str, Any]:
        """last.ckpt, or one line saying it is damaged and where the epoch before it is kept."""
        try:
            return read_checkpoint(last)
        except UserError as e:
            previous = last.with_name(PREVIOUS)
            hint = (f"the epoch before it is kept: continue with --ckpt_path {previous}" if previous.is_file()
                    else "no earlier checkpoint is kept: start again without --ckpt_path")
            raise UserError(f"{e}; {hint}") from None

    def _model_setting(self, key: str) -> Any:
        """The config's model `class_path` or `init_args` (None when the config names no model)."""
        model = self._setting("model")
        return model.get(key) if model is not None and hasattr(model, "get") else None

    def _config_tutorial(self) -> str | None:
        """The tutorial the config's model class is (None when the config names no model)."""
        from mnist_lit.models import TUTORIALS

        class_path = self._model_setting("class_path")
        return next((n for n, cls in TUTORIALS.items() if class_path and class_path.rsplit(".", 1)[-1] == cls.__name__), None)

    def _check_epochs(self, path: str, checkpoint: dict[str, Any]) -> None:
        """Resuming a run that already trained more epochs than --trainer.max_epochs asks for: one line (a
        run whose last epoch is in the checkpoint resumes to its test and outputs, as it should)."""
        if self.config.get("subcommand") != "fit":
            return  # test/validate/predict read only the weights
        done = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
        wanted = self._setting("trainer").get("max_epochs")
        if done is not None and wanted not in (None, -1) and done > wanted:
            raise UserError(f"{path}: already trained {done} epochs, more than --trainer.max_epochs {wanted}; "
                            f"ask for {done} or more to continue it, or evaluate it with `test --ckpt_path {path}`")

    def _check_tutorial(self, path: str, checkpoint: dict[str, Any]) -> None:
        """A checkpoint of another tutorial than the config's is refused: Lightning would quietly rebuild
        the checkpoint's model instead, and train it into the config's output folder."""
        wanted = self._config_tutorial()
        held = checkpoint["mnist_lit"].get("tutorial")
        if wanted and held != wanted:
            raise UserError(f"{path}: holds the {held} tutorial, but the config is {wanted}'s; use --config {held}, "
                            "or another checkpoint")
        # same tutorial: Lightning rebuilds the model with the checkpoint's hyperparameters, whatever the
        # config or the command line says; name each value that changes that way
        asked = self._model_setting("init_args")
        changed = [f"{k} {v!r} (not {asked.get(k)!r})" for k, v in checkpoint.get("hyper_parameters", {}).items()
                   if not k.startswith("_") and asked is not None and k in asked and asked.get(k) != v]
        if changed and os.environ.get("LOCAL_RANK", "0") == "0":
            print(f"{path}: the model keeps the checkpoint's {', '.join(changed)}", flush=True)

    def before_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        self.datamodule.source  # a data folder with a file missing: one line, before anything is written
        # before anything is written: a second fit into this folder would interleave its last.ckpt with ours
        self._folder_lock = atomic.hold_folder(self.output_dir)
        if getattr(self, "_missing_last", None) is not None:
            # a requeue script passes --ckpt_path last every time, the first time included
            print(f"--ckpt_path last: no last.ckpt in {self._missing_last.parent} yet, so training starts from scratch",
                  flush=True)
        print(report.keras_summary(self.model.net, self.model.name), flush=True)  # Keras' model.summary()

    def before_validate(self) -> None:
        if self.datamodule.hparams.val == "none":  # Lightning would run no batch and report nothing
            raise UserError(f"validate: this config has no validation data (data.val is none); add --data.val "
                            f"holdout (a seeded {self.datamodule.hparams.val_size:,} from the training set) or "
                            "--data.val test, or run `test`")

    def after_fit(self) -> None:
        try:
            self._evaluate_and_save()
        finally:  # (if fit itself fails, the lock goes with the process, or with this object in a test)
            if getattr(self, "_folder_lock", None) is not None:
                self._folder_lock.close()

    def _evaluate_and_save(self) -> None:
        """Keras' `evaluate` after `fit`: test the final weights, save them, write metrics.json."""
        trainer, model = self.trainer, self.model
        if trainer.interrupted:
            return
        results = trainer.test(model, datamodule=self.datamodule, verbose=False)[0]
        self.print_evaluation("test", results)
        if trainer.fast_dev_run:  # a smoke run must not overwrite a real run's outputs
            return
        out = self.output_dir
        trainer.save_checkpoint(out / "model.ckpt", weights_only=True)  # every rank calls it; rank 0 writes
        if trainer.is_global_zero:
            atomic.write_json(out / "metrics.json", self.run_summary(results))
            print(f"Saved {out / 'model.ckpt'} and {out / 'metrics.json'}", flush=True)
            images, labels = self.datamodule.test_set()
            figures = report.write_report(out, copy.deepcopy(model.net).cpu(), images, labels)
            print("Figures: " + ", ".join(str(p) for p in figures), flush=True)
            scripted = export.export(out / "model.ckpt", "torchscript", out / "model.pt")
            print(f"TorchScript model for torch.jit.load: {scripted}", flush=True)

    def after_test(self) -> None:
        self.print_evaluation("test", self.trainer.callback_metrics)

    def after_validate(self) -> None:
        self.print_evaluation("val", self.trainer.callback_metrics)

    def after_predict(self) -> None:
        """Write what `predict` computed (probabilities of the test images) to predictions.csv."""
        batches = self.trainer.predict_loop.predictions
        probs = torch.cat(batches).cpu() if batches else torch.zeros(0, len(self.model.classes))
        world = self.trainer.world_size
        if world > 1:  # each rank predicted images rank, rank + world, ...: put the shares back in order
            shares: list[Any] = [None] * world
            torch.distributed.all_gather_object(shares, probs)
            probs = torch.empty(sum(len(s) for s in shares), probs.shape[1])
            for rank, share in enumerate(shares):
                probs[rank::world] = share
        if not len(probs) or not self.trainer.is_global_zero:
            return
        labels = self.datamodule.test_set()[1]
        confidence, predicted = probs.max(1)
        classes = self.model.classes
        lines = ["index,label,predicted,probability"]
        for i, (p, c) in enumerate(zip(predicted.tolist(), confidence.tolist())):
            lines.append(f"{i},{classes[int(labels[i])]},{classes[p]},{c:.6f}")
        path = self.output_dir / "predictions.csv"
        atomic.write_text(path, "\n".join(lines) + "\n")
        print(f"Saved {len(probs)} predictions to {path}", flush=True)

    def print_evaluation(self, stage: str, metrics) -> None:
        """Keras `evaluate`'s line: `Test: loss: 0.0312 - acc: 0.9901`."""
        if self.trainer.is_global_zero:
            title = {"test": "Test", "val": "Validation"}[stage]
            print(f"{title}: loss: {float(metrics[f'{stage}_loss']):.4f} - acc: {float(metrics[f'{stage}_acc']):.4f}",
                  flush=True)

    def run_summary(self, results: dict[str, float]) -> dict[str, Any]:
        trainer, model = self.trainer, self.model
        recorder = next(c for c in trainer.callbacks if isinstance(c, RunRecorder))
        cm = model.confusion_matrix
        per_class = (cm.diag() / cm.sum(1).clamp(min=1)).tolist() if cm is not None else []
        return {
            "tutorial": model.name,
            "dataset": model.hparams.dataset,
            "test_acc": results["test_acc"],
            "test_loss": results["test_loss"],
            "test_samples": int(cm.sum()) if cm is not None else None,
            "per_class_acc": dict(zip(model.classes, per_class)),
            "params": count_params(model.net),
            "epochs": len(recorder.history),
            "steps": trainer.global_step,
            "epoch_seconds": recorder.epoch_seconds,
            "history": recorder.history,
            "confusion_matrix": cm.tolist() if cm is not None else None,
            "device": str(trainer.strategy.root_device),
            "world_size": trainer.world_size,
            "versions": {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version()},
        }


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv`, or on the command line (rewritten in place so DDP's relaunch sees the same)."""
    quiet_lightning()
    try:
        if argv is None:
            sys.argv[1:] = resolve_config_args(sys.argv[1:])
            MnistCLI()
        else:
            MnistCLI(args=resolve_config_args(argv))
    except SIGTERMException:  # a SystemExit without a code: Lightning would exit 0 and a scheduler see success
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        close_process_group()


def close_process_group(timeout: float = 60.0) -> None:
    """Under DDP, every rank waits for the others, then closes the process group, before Python exits.

    Left to Lightning's atexit hook, a gloo process group was torn down while the interpreter shut down,
    and now and then a rank aborted there ("terminate called without an active exception", exit -6)
    after its work was done: about 1 run in 20 of a two-process `predict`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout))  # a rank that died: an error
        else:
            dist.barrier()
    except Exception:  # a rank is gone: closing is all that is left to do
        pass
    dist.destroy_process_group()
