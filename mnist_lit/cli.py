"""The Lightning CLI: `fit`, `validate`, `test` and `predict` over the five tutorials.

A stock `LightningCLI` with: bare config names (`--config cnn.yaml` finds `configs/cnn.yaml`),
`data.dataset` linked into the model (exports know their class names), every output in
`checkpoints/<tutorial>/`, a Keras-style summary before `fit` and Keras' `evaluate` after it.
"""

from __future__ import annotations

import ast
import datetime
import importlib.util
import inspect
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

# Lightning 2.6 still calls jsonargparse APIs deprecated in 4.49; users cannot act on those warnings
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from mnist_lit import atomic, model_files, outputs, report
from mnist_lit.callbacks import EpochLine, InterruptNotice, RunRecorder, quiet_lightning
from mnist_lit.data import MNISTDataModule
from mnist_lit.errors import UserError
from mnist_lit.models import TUTORIALS, Tutorial

CONFIG_DIRS = (Path("configs"), Path(__file__).resolve().parent.parent / "configs")
CONFIG_FLAGS = ("--config", "-c")
# flags a Keras script or an argparse habit suggests, and the Lightning CLI's name for each
HABIT_FLAGS = {"--epochs": "--trainer.max_epochs", "--max_epochs": "--trainer.max_epochs",
               "--max-epochs": "--trainer.max_epochs", "--batch_size": "--data.batch_size",
               "--batch-size": "--data.batch_size", "--lr": "--model.init_args.lr",
               "--learning_rate": "--model.init_args.lr", "--learning-rate": "--model.init_args.lr",
               "--optimizer": "--model.init_args.optimizer"}  # the tutorials' Keras optimizers, by name


class MnistCLI(LightningCLI):
    """`python -m mnist_lit {fit,validate,test,predict} --config configs/<tutorial>.yaml [--trainer.* ...]`."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        defaults = kwargs.pop("trainer_defaults", None) or {}
        given = defaults.get("callbacks") or []
        # on every run, whatever the config: the per-epoch record (kept in checkpoints) and the SIGTERM line
        callbacks = [*(given if isinstance(given, list) else [given]), RunRecorder(), InterruptNotice()]
        super().__init__(
            Tutorial, MNISTDataModule, subclass_mode_model=True, parser_class=OneLineErrors,
            save_config_callback=outputs.ConfigSaver, save_config_kwargs={"overwrite": True},
            trainer_defaults={**defaults, "callbacks": callbacks},
            seed_everything_default=0, auto_configure_optimizers=False,
            # allow_abbrev off: a habit like --lr must not read as the start of --lr_scheduler
            parser_kwargs={"prog": "python -m mnist_lit", "description": __doc__.splitlines()[0], "allow_abbrev": False},
            args=args, run=run, **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=Optional[str], default=None,
                            help="Where checkpoints, config.yaml and metrics.json go (default: checkpoints/<tutorial>).")
        parser.add_argument("--weights", type=Optional[str], default=None,
                            help="Start from these weights instead of a fresh initialisation: a Keras .keras or .h5 file of "
                            "this tutorial, or an mnist_lit .ckpt or TorchScript .pt (from Python: "
                            "mnist_lit.model_files.load_weights(model, path)).")
        parser.link_arguments("data.dataset", "model.init_args.dataset")
        # LightningCLI's --lr_scheduler, given to the model's own configure_optimizers, which keeps the Keras
        # optimizer (stock LightningCLI applies it only with --optimizer, which would replace it)
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple, link_to="model.init_args.lr_scheduler")

    # ------------------------------------------------------------ the parsed config

    def _settings(self) -> Any:
        """This subcommand's part of the parsed config (the whole config with run=False)."""
        subcommand = self.config.get("subcommand")
        return self.config[subcommand] if subcommand else self.config

    def _config_tutorial(self) -> str | None:
        """The tutorial the config's model class is (None when the config names no model)."""
        model = self._settings().get("model")
        class_path = model.get("class_path") if hasattr(model, "get") else None
        return next((n for n, cls in TUTORIALS.items() if class_path and class_path.rsplit(".", 1)[-1] == cls.__name__), None)

    @property
    def output_dir(self) -> Path:
        """--output_dir, else checkpoints/<tutorial> (known from the config before the model exists)."""
        return Path(self._settings().get("output_dir") or Path("checkpoints") / (self._config_tutorial() or self.model.name))

    # ------------------------------------------------------------ Lightning's hooks, in the order they run

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        check_device(self._settings().get("trainer", {}).get("accelerator"))
        # Lightning reads --ckpt_path's hyperparameters (model class included) right after this; a file that
        # is not an mnist_lit checkpoint, or one of another tutorial, must fail here in one line
        self._missing_last: Path | None = None  # --ckpt_path last with nothing to resume: before_fit says so
        settings, tutorial = self._settings(), self._config_tutorial()
        given = settings.get("ckpt_path")
        if given == "last" and (settings.get("output_dir") or tutorial):
            path = self.output_dir / "last.ckpt"  # where Lightning will look: check that file here
            if not path.is_file():
                self._missing_last = path
                return
            checkpoint = model_files.read_last(path, path.with_name(outputs.PREVIOUS))
        elif given and given not in ("best", "hpc"):
            path, checkpoint = given, model_files.read_checkpoint(given)
            if not recorded_by_the_cli(checkpoint):  # Lightning's own reading of it would end in a parser dump
                raise UserError(f"{given}: saved outside the Lightning CLI, so it records no model class; it holds "
                                f"a {checkpoint['mnist_lit']['tutorial']} model: load it with mnist_lit.models.TUTORIALS"
                                f"[name].load_from_checkpoint, or train from its weights with --weights {given}")
        else:
            return
        model = settings.get("model")
        asked = model.get("init_args") if hasattr(model, "get") else None
        fitting = self.config.get("subcommand") == "fit"
        note = model_files.check_start(path, checkpoint, tutorial, asked, fitting, settings.get("trainer").get("max_epochs"))
        if note and os.environ.get("LOCAL_RANK", "0") == "0":
            print(note, flush=True)

    def before_instantiate_classes(self) -> None:
        # a TensorBoardLogger given without its folder (see tensorboard_folder) writes into the run's output
        # folder, under tensorboard/, as the default one does
        logger = self._settings().get("trainer", {}).get("logger")
        for spec in logger if isinstance(logger, list) else [logger]:
            if not getattr(spec, "class_path", "").endswith("TensorBoardLogger"):
                continue
            if not tensorboard_installed():  # Lightning's own message is a page of jsonargparse's union errors
                raise UserError("--trainer.logger TensorBoardLogger: the tensorboard package is not installed; "
                                ".venv/bin/pip install tensorboard (make train installs it)")
            if spec.init_args.save_dir == "":
                spec.init_args.save_dir, spec.init_args.name = str(self.output_dir), "tensorboard"

    def instantiate_classes(self) -> None:
        # jsonargparse reports an error raised in a model's or data module's __init__ as a ValueError about
        # Union subtypes, keeping the original as its cause: show that
        try:
            super().instantiate_classes()
        except ValueError as e:
            cause: BaseException | None = e
            while cause is not None and not isinstance(cause, UserError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The Trainer, with mnist_lit's defaults for whatever the config leaves unset (None)."""
        # the model exists by now: --weights are read first, so that a bad file is the run's one line, before
        # the Trainer has printed anything
        weights = self._settings().get("weights")
        if weights:
            model_files.load_weights(self.model, weights)
        settings = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        out = self.output_dir
        given = settings.get("callbacks") or []
        given = given if isinstance(given, list) else [given]
        defaults: dict[str, Any] = {}
        if not settings.get("plugins"):
            defaults["plugins"] = [outputs.AtomicCheckpointIO()]
        if settings.get("enable_model_summary") is None:
            defaults["enable_model_summary"] = False  # before_fit prints the Keras-style summary instead
        if settings.get("default_root_dir") is None:
            defaults["default_root_dir"] = str(out)
        logger = settings.get("logger")
        if logger in (None, True):  # metrics.csv, and TensorBoard's event files where it is installed
            defaults["logger"] = [outputs.EpochCSVLogger(out, name="logs")]
            if tensorboard_installed():
                defaults["logger"].append(TensorBoardLogger(out, name="tensorboard"))
        callbacks = list(given)
        if settings.get("enable_checkpointing") is not False and not any(isinstance(c, ModelCheckpoint) for c in given):
            # last.ckpt after every epoch, for resuming (Lightning 2.6 writes save_last's file at an epoch
            # end only alongside a top-k file, so the single kept "top-k" file is named last.ckpt instead);
            # the tested model is saved as model.ckpt after fit
            callbacks.append(ModelCheckpoint(dirpath=out, filename="last", save_top_k=1, enable_version_counter=False))
        if settings.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            callbacks.append(EpochLine())
        if self.subcommand == "predict":
            callbacks.append(outputs.PredictionWriter(out / "predictions.csv"))
        self.save_config_kwargs["output_dir"] = str(out)
        for name, (takes, what) in TRAINER_RULES.items():
            value = settings.get(name)
            if value is not None and not takes(value):
                raise UserError(f"--trainer.{name}: got {value}; it takes {what}")
        try:
            return super().instantiate_trainer(**{**defaults, "callbacks": callbacks, **kwargs})
        except (MisconfigurationException, ValueError, TypeError) as e:  # a Trainer argument Lightning refuses
            raise UserError(trainer_problem(e)) from None

    def before_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        self.datamodule.source  # a data folder with a file missing: one line, before anything is written
        # before anything is written: a second fit into this folder would interleave its last.ckpt with ours
        self._folder_lock = atomic.hold_folder(self.output_dir)
        if self._missing_last is not None:  # a requeue script passes --ckpt_path last every time, the first too
            print(f"--ckpt_path last: no last.ckpt in {self._missing_last.parent} yet, so training starts from scratch",
                  flush=True)
        print(report.keras_summary(self.model.net, self.model.name), flush=True)  # Keras' model.summary()

    def after_fit(self) -> None:
        try:
            if not self.trainer.interrupted:
                outputs.test_and_save(self.trainer, self.model, self.datamodule, self.output_dir)
        finally:  # (if fit itself fails, the lock goes with the process, or with this object in a test)
            if getattr(self, "_folder_lock", None) is not None:
                self._folder_lock.close()

    def before_validate(self) -> None:
        if self.datamodule.hparams.val == "none":  # Lightning would run no batch and report nothing
            raise UserError(f"validate: this config has no validation data (data.val is none); add --data.val "
                            f"holdout (a seeded {self.datamodule.hparams.val_size:,} from the training set) or "
                            "--data.val test, or run `test`")

    def after_validate(self) -> None:
        outputs.print_evaluation(self.trainer, "val", self.trainer.callback_metrics)

    def after_test(self) -> None:
        outputs.print_evaluation(self.trainer, "test", self.trainer.callback_metrics)


# Trainer arguments Lightning 2.6 takes at construction and then divides by once the fit runs (a
# ZeroDivisionError at the first batch: 0 for any of the first three), reads as nonsense (a negative
# interval logs at every step; a negative accumulation steps at every other batch), or refuses without
# saying what it takes (devices 0): each refused before the Trainer exists, with what it takes
TRAINER_RULES = {
    "devices": (lambda v: str(v).strip() not in ("0", "[]"), "a number of devices, 1 or more, or auto; on GPUs also "
                "-1 (all of them) or a list of their indices such as [0, 1]"),
    "accumulate_grad_batches": (lambda v: v >= 1, "a number of batches, 1 or more (1: an optimizer step every batch)"),
    "val_check_interval": (lambda v: not isinstance(v, int) or v >= 1,
                           "a fraction of an epoch from 0.0 to 1.0, a number of batches (1 or more), or a time DD:HH:MM:SS"),
    "check_val_every_n_epoch": (lambda v: v >= 1, "a number of epochs, 1 or more, or null (validation every "
                                "--trainer.val_check_interval batches, across epochs)"),
    "log_every_n_steps": (lambda v: v >= 0, "a number of steps, 1 or more, or 0 (no logging within an epoch)"),
}


def trainer_problem(error: Exception) -> str:
    """Lightning's refusal of a Trainer argument as one line that starts with the flag it names."""
    text = " ".join(str(error).split()) or type(error).__name__
    found = (re.search(rf"\b{n}\b", text) for n in inspect.signature(L.Trainer.__init__).parameters)
    named = sorted((m.start(), m[0]) for m in found if m)  # the first the message names
    return f"--trainer.{named[0][1]}: {text}" if named else f"--trainer: {text}"


def refuses_trainer_argument(error: Exception) -> bool:
    """Whether Lightning itself raised `error` about a Trainer argument, named in its way (`name`, `Trainer(name=`)."""
    frames = traceback.extract_tb(error.__traceback__)
    lightning = str(Path(inspect.getfile(L)).parent)
    names = "|".join(inspect.signature(L.Trainer.__init__).parameters)
    return bool(frames) and frames[-1].filename.startswith(lightning) and bool(
        re.search(rf"`(?:Trainer\()?(?:{names})\b", str(error)))


def tensorboard_installed() -> bool:
    return bool(importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"))


def recorded_by_the_cli(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint's hyperparameters hold more than its tutorial's arguments: the Lightning CLI adds
    the model's class to those of a model it made, and reads it back for --ckpt_path."""
    tutorial = TUTORIALS.get(checkpoint["mnist_lit"].get("tutorial"))
    if tutorial is None:
        return True  # check_start names what is wrong with it
    arguments = set(inspect.signature(tutorial.__init__).parameters) | set(inspect.signature(Tutorial.__init__).parameters)
    return not set(checkpoint.get("hyper_parameters", {})) <= arguments


def build_tutorial(cls: type[Tutorial], dataset: str = "mnist", **init_args: Any) -> Tutorial:
    """A tutorial made by the Lightning CLI itself, so that the checkpoints written of it record its class
    as `--ckpt_path` reads it (import-keras makes its models so)."""
    args = ["--model", cls.__name__, f"--data.dataset={dataset}", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false", *(f"--model.init_args.{k}={v}" for k, v in init_args.items())]
    return MnistCLI(args=args, run=False).model


# ---------------------------------------------------------------- parsing


def resolve_config(value: str) -> str:
    """A config path as given if it exists, else the same name (with or without .yaml) under configs/."""
    if Path(value).exists() or value.startswith(("{", "[")) or ":" in value:
        return value
    for folder in CONFIG_DIRS:
        for name in (value, f"{value}.yaml"):
            if (folder / name).is_file():
                return str(folder / name)
    return value  # jsonargparse reports it as missing


def model_of_checkpoint(argv: list[str]) -> list[str]:
    """`argv`, with `--model <its tutorial>` added when it gives --ckpt_path and names no config or model: a
    checkpoint written outside the CLI (import-keras, Python) does not record its class the CLI's way."""
    names = [a.partition("=")[0] for a in argv]
    if "--ckpt_path" not in names or any(n in (*CONFIG_FLAGS, "--model") for n in names):
        return argv
    i = names.index("--ckpt_path")
    path = argv[i].partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
    if path in ("", "last", "best", "hpc"):
        return argv
    tutorial = model_files.read_checkpoint(path)["mnist_lit"].get("tutorial")
    return [*argv, "--model", TUTORIALS[tutorial].__name__] if tutorial in TUTORIALS else argv


def tensorboard_folder(argv: list[str]) -> list[str]:
    """`argv` with an empty `--trainer.logger.save_dir` after a TensorBoardLogger that names no folder of its
    own (Lightning requires one), so that its event files go into the run's output folder (the CLI fills it in)."""
    if any(arg.startswith("--trainer.logger.save_dir") for arg in argv):
        return argv
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        out.append(arg)
        if flag in ("--trainer.logger", "--trainer.logger+"):
            if not eq:  # the value is the next word
                value = next(it, None)
                out += [] if value is None else [value]
            if (value or "").endswith("TensorBoardLogger"):
                out.append("--trainer.logger.save_dir=")
    return out


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


class OneLineErrors(LightningArgumentParser):
    """A bad flag or config value ends in one line naming it and the problem, exit status 2, instead of
    jsonargparse's usage of every option (MNIST_LIT_VERBOSE=1 shows that)."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("MNIST_LIT_VERBOSE") == "1":
            super().error(message, ex)  # inside jsonargparse's own parsing: it catches this and goes on
        print(f"mnist_lit: error: {flag_problem(message)} (--help lists the options)", file=sys.stderr)
        raise SystemExit(2)


def check_device(accelerator: Any) -> None:
    """A GPU asked for where torch sees none: one line, before Lightning's page-long traceback."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if not isinstance(accelerator, str) or {"gpu": cuda or mps, "cuda": cuda, "mps": mps}.get(accelerator, True):
        return
    here = ", ".join(["cpu"] + ["gpu"] * (cuda or mps))
    raise UserError(f"--trainer.accelerator {accelerator}: torch finds no such device on this machine (it has: "
                    f"{here}); leave the flag out (auto picks what there is) or pass --trainer.accelerator cpu")


TYPE_WORDS = {"int": ["a whole number"], "float": ["a number"], "bool": ["true", "false"], "str": ["text"],
              "NoneType": ["null"]}


def flag_problem(message: str) -> str:
    """jsonargparse's message as one line, the flag first: for a model's argument, the setting and the
    tutorial's rule (not the union of types it was tried against); for a config that is not there, the
    tutorials' names; for a Keras or argparse habit (`--epochs 3`), the flag to type instead."""
    text = " ".join(line.strip() for line in str(message).splitlines() if line.strip())
    missing = re.search(r"""^Parser key "config": File does not exist: '(.*)'$""", text)
    if missing:
        return (f"--config {Path(missing[1]).name}: no file {missing[1]} and no tutorial of that name; "
                f"one of {', '.join(TUTORIALS)} (configs/NAME.yaml), or a path to a .yaml file")
    unrecognized = re.search(r"^unrecognized arguments: (.*)$", text)
    for i, token in enumerate(unrecognized[1].split() if unrecognized else []):
        flag, _, value = token.partition("=")
        if flag in HABIT_FLAGS:
            rest = unrecognized[1].split()[i + 1:]
            value = value or (rest[0] if rest and not rest[0].startswith("-") else "N")
            return f"{flag} {value}: not an option of this CLI; use {HABIT_FLAGS[flag]} {value}"
    nested = re.search(r"Problem with given class_path '[\w.]*?(\w+)': Parser key \"([^\"]+)\": (.*?)"
                       r"(?: - Expected a <class 'NoneType'>.*)?$", text)
    if nested:
        return f"--model.init_args.{nested[2]} ({nested[1]}): {nested[3]}"
    union = re.search(r'^Parser key "([^"]+)": Does not validate against any of the Union subtypes .*? Errors: '
                      r'((?:- Expected a (?:typing\.Literal\[[^]]*\]|<class \'\w+\'>) )+)Given value type: .*'
                      r'Given value: (.*)$', text)
    if union:  # `--trainer.precision 7`, `--trainer.max_epochs x`: what the flag takes, not the union it is made of
        takes = []
        for literal, kind in re.findall(r"Literal\[([^]]*)\]|<class '(\w+)'>", union[2]):
            takes += [str(v) for v in ast.literal_eval(f"[{literal}]")] if literal else TYPE_WORDS.get(kind, [kind])
        takes = list(dict.fromkeys(takes))
        return f"--{union[1]}: got {union[3]}; it takes {'one of ' if len(takes) > 2 else ''}{', '.join(takes[:-1])}" \
               f"{' or ' if len(takes) > 1 else ''}{takes[-1]}"
    unknown = re.search(r'^Parser key "model": .*Given value: (\S+)$', text)
    if unknown and "Expected a dot import path" in text:
        names = ", ".join(sorted(cls.__name__ for cls in TUTORIALS.values()))
        return f"--model {unknown[1]}: not a tutorial; one of {names}"
    return re.sub(r'^Parser key "([^"]+)": ', r"--\1: ", text)


# ---------------------------------------------------------------- the process


def main(argv: list[str] | None = None) -> None:
    """Run the CLI on `argv`, or on the command line (rewritten in place so DDP's relaunch sees the same)."""
    quiet_lightning()
    try:
        if argv is None:
            sys.argv[1:] = tensorboard_folder(model_of_checkpoint(resolve_config_args(sys.argv[1:])))
            MnistCLI()
        else:
            MnistCLI(args=tensorboard_folder(model_of_checkpoint(resolve_config_args(argv))))
    except SIGTERMException:  # a SystemExit without a code: Lightning would exit 0 and a scheduler see success
        raise SystemExit(128 + signal.SIGTERM) from None
    except (MisconfigurationException, ValueError) as e:
        # Lightning refuses some Trainer arguments only once the fit knows its data (a --trainer.val_check_interval
        # beyond the epoch's batches), naming them `so`, before any batch runs
        if isinstance(e, UserError) or not refuses_trainer_argument(e):
            raise
        raise UserError(trainer_problem(e)) from None
    finally:
        close_process_group()


def close_process_group(timeout: float = 60.0) -> None:
    """Under DDP, every rank waits for the others, then closes the process group, before Python exits.

    Left to Lightning's atexit hook, a gloo process group was torn down while the interpreter shut down,
    and now and then a rank aborted there ("terminate called without an active exception", exit -6)
    after its work was done.
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
    # Lightning starts the other ranks of a node as this process's children: the command ends with its job,
    # as a scheduler or a test waiting on it expects, not while a rank is still on its way out. Reaped at
    # once: Lightning's observer thread, polling every 5 s, SIGKILLs this process when it finds a rank that
    # ended with a non-zero code (143 after SIGTERM) before we did, cutting this process's own exit short
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.002)
        except ChildProcessError:  # none left
            return
