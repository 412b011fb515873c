"""`python -m mnist_lit tune`: search a tutorial's hyperparameters with Optuna, on one machine or many.

Each trial is the `fit` that `--config` describes with the trial's values as flags, validated on a seeded
hold-out of the training images (never the test set). Each worker runs Optuna's `study.optimize`: TPE proposes,
Hyperband prunes on `val_acc` (`PyTorchLightningPruningCallback`), and in an SQLite or PostgreSQL study a trial
whose worker died is failed and run again (heartbeat, `RetryHeartbeatStaleTrialCallback`). The study lives in
a storage, so the same command again adds trials to it, and processes (`--workers`) or machines share it.
At the end: the best trial, `best.yaml` for `fit --config`, a table (`trials.csv`) and Optuna's figures.
docs/tuning.md is the how-to.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_lit import atomic
from mnist_lit.errors import UserError

METRIC = "val_acc"
SPACE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tune"
# the trial's own settings: what makes it a tuning trial and not a fit (validation on the hold-out, no files)
TRIAL_FLAGS = ("--data.val", "holdout", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0")
OWN_FLAGS = ("--output_dir", "--ckpt_path")  # fit's flags that tune sets itself
DONE = ("COMPLETE", "PRUNED")  # trials that count as done
MAX_RETRY = 2  # a trial whose worker dies three times (out of memory, say) is not run a fourth time
WORKER = f"{socket.gethostname()}:{os.getpid()}"

# ---------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Param:
    """One hyperparameter of the space: its name in the space file, the config key it sets, and its entry there,
    the arguments of Optuna's `suggest_int` / `suggest_float` (`low`, `high`, `step`, `log`) or
    `suggest_categorical` (`choices`)."""

    name: str
    key: str  # model.init_args.units, data.batch_size, trainer.max_epochs
    spec: dict[str, Any]

    def distribution(self) -> Any:
        """Optuna's distribution for the entry, which checks it: a range is whole numbers when low, high and step
        are."""
        from optuna import distributions

        if "choices" in self.spec:
            return distributions.CategoricalDistribution(**self.spec)
        whole = all(isinstance(self.spec.get(k, 1), int) for k in ("low", "high", "step"))
        return (distributions.IntDistribution if whole else distributions.FloatDistribution)(**self.spec)

    @property
    def size(self) -> float:
        """How many values it can take (a range of decimals without a step: endless)."""
        dist = self.distribution()
        if "choices" in self.spec:
            return len(dist.choices)
        return math.inf if dist.step is None else round((dist.high - dist.low) / dist.step) + 1

    def suggest(self, trial: Any) -> Any:
        kind = type(self.distribution()).__name__.removesuffix("Distribution").lower()  # int, float or categorical
        return getattr(trial, f"suggest_{kind}")(self.name, **self.spec)

    def record(self) -> dict[str, Any]:
        """What the study remembers of this parameter (compared when a run resumes it)."""
        return self.spec if "choices" in self.spec else {"step": None, "log": False, **self.spec}


def space_key(name: str) -> tuple[str, str]:
    """(section, config key) of a name in the space file: a bare name is the model's argument."""
    section, dot, rest = name.partition(".")
    if not dot:
        return "model", f"model.init_args.{name}"
    return section, f"model.init_args.{rest.removeprefix('init_args.')}" if section == "model" else name


def read_space(path: Path, known: dict[str, set[str]]) -> list[Param]:
    """The space file's parameters, checked: every name is an argument of the model, the data module or
    the Trainer (`known`), and every entry makes an Optuna distribution (Optuna's words when it does not)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the search space ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: a search space is a mapping of NAME: {{low: A, high: B}} or NAME: {{choices: [...]}}")
    params = []
    for name, spec in raw.items():
        where = f"{path}: {name}"
        section, key = space_key(str(name))
        if section not in known or key.rsplit(".", 1)[-1] not in known[section]:
            options = ", ".join(sorted(known.get(section, known["model"])))
            what = {"data": "the data module", "trainer": "the Trainer"}.get(section, "the model")
            raise UserError(f"{where}: not an argument of {what}; it takes {options}")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: give {{low: A, high: B}} (with step: or log: if wanted) or {{choices: [...]}}")
        numbers = [spec[k] for k in ("low", "high", "step") if spec.get(k) is not None]
        if "choices" not in spec and any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise UserError(f"{where}: low, high and step must be numbers (YAML reads 1e-4 as text: write 1.0e-4)")
        param = Param(str(name), key, spec)
        try:
            with warnings.catch_warnings():
                # Optuna only warns of choices a study cannot store (a list, a mapping): here they are refused
                warnings.filterwarnings("error", message="Choices for a categorical distribution")
                param.distribution()
        except (TypeError, ValueError, UserWarning) as e:  # a field missing or unknown, an empty range
            raise UserError(f"{where}: {e}") from None
        params.append(param)
    return params


def flags(params: list[Param], values: dict[str, Any]) -> list[str]:
    """The command-line flags that set these values, as `fit` would take them."""
    def text(value: Any) -> str:
        return "null" if value is None else json.dumps(value) if isinstance(value, bool) else str(value)

    return [f"--{p.key}={text(values[p.name])}" for p in params]


def show(values: dict[str, Any]) -> str:
    return " - ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


def tried(study: Any) -> dict[tuple, Any]:
    """The values of every finished trial, each with the first trial that ran them."""
    found: dict[tuple, Any] = {}
    for t in study.get_trials(deepcopy=False):
        if t.state.name in DONE:
            found.setdefault(tuple(sorted(t.params.items())), t)
    return found


# ---------------------------------------------------------------- storage and study


def describe_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return url if url.startswith("journal:") else make_url(url).render_as_string(hide_password=True)
    return url


def open_storage(url: str, heartbeat: int = 10) -> Any:
    """An Optuna storage from a URL: `journal:PATH` is a journal file (processes on one machine, or a shared
    file system with working locks); anything else is an SQLAlchemy URL (sqlite, postgresql, mysql), whose
    running trials beat every `heartbeat` seconds: one silent for three beats is failed and queued again.
    One line when it cannot be reached."""
    import optuna

    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        if not path.parent.is_dir():
            raise UserError(f"--storage {url}: no folder {path.parent} for the journal file")
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        # the open(O_EXCL) lock: works where symlinks do not (some network file systems)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), JournalFileOpenLock(str(path))))
    # SQLite: several workers wait for the file's lock rather than fail
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY))
        except Exception as e:  # sqlalchemy's errors, a missing driver (ImportError), a bad URL
            if attempt < 4 and any(race in str(e) for race in ("already exists", "duplicate key", "UNIQUE constraint")):
                time.sleep(0.5 * (attempt + 1))  # two processes made Optuna's tables at once: the other won
                continue
            reason = getattr(e, "orig", None) or e
            text = " ".join(str(reason).split()) or type(reason).__name__
            if isinstance(e, ImportError) and isinstance(e.__cause__, ImportError):  # Optuna's words hide the driver's
                text = (f"{e.__cause__} (the URL's driver; for PostgreSQL: pip install 'psycopg[binary]' and a "
                        "postgresql+psycopg:// URL)")
            raise UserError(f"--storage {describe_url(url)}: cannot be reached: {text[:300]}") from None


def open_study(storage: Any, url: str, name: str, space: str, config: str) -> Any:
    """The study `name` in `storage`, created on first use; one that searched another space is refused."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    held = study.user_attrs.get("space")
    if held is None:
        for key, value in (("space", space), ("config", config), ("metric", METRIC)):
            study.set_user_attr(key, value)
    elif held != space:
        raise UserError(f"study {name!r} in {describe_url(url)} searched another space ({held}), not this one "
                        f"({space}); give --study a new name, or search the space it holds")
    return study


def load(settings: Settings, index: int) -> Any:
    """The study as worker `index` searches it. TPE's `constant_liar`: a trial under way counts as a poor one,
    so that workers running at once try different values; the seed is the worker's own and changes as the
    study grows, so that a resumed study is given new values."""
    import optuna

    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage, settings.heartbeat))
    seed = None if settings.seed is None else settings.seed + 7919 * index + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True)
    study.pruner = {"hyperband": optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3),  # KerasTuner's
                    "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
                    "none": optuna.pruners.NopPruner()}[settings.pruner]
    return study


# ---------------------------------------------------------------- trials


@dataclass
class Settings:
    """What every worker needs: plain values, sent to the worker processes."""

    config: str
    fit_args: list[str]  # the user's flags for the fit (--trainer.max_epochs 3, --data.data_dir ...)
    space: list[Param]
    storage: str
    study: str
    out: str
    trials: int
    deadline: float | None  # time.time() after which no trial starts
    seed: int | None
    pruner: str
    heartbeat: int
    workers: int


class Interrupted(Exception):
    """A trial stopped by SIGTERM, Ctrl-C or a bad setting: Optuna marks it FAIL and the worker stops."""


class Stop:
    """SIGTERM to a worker, or its trial interrupted: `study.optimize` ends after the trial under way (the fit's
    InterruptNotice stops that one at its next step), and the worker processes this one started stop too."""

    def __init__(self, children: list[Any] | None = None) -> None:
        self.asked: str | None = None  # why: "SIGTERM", "Ctrl-C", ...
        self.children, self.study = children or [], None

    def __enter__(self) -> Stop:
        self.before = signal.signal(signal.SIGTERM, lambda signum, frame: self.now("SIGTERM"))
        return self

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self.before)

    def now(self, why: str) -> None:
        self.asked = self.asked or why
        for child in self.children:
            if child.exitcode is None:  # not yet reaped: its pid is still its own
                os.kill(child.pid, signal.SIGTERM)
        with contextlib.suppress(AttributeError, RuntimeError):  # no study yet, or outside `optimize`: the
            self.study.stop()                                    # worker reads `asked` before it starts one


def quiet() -> None:
    """Only the trial lines, in this process: Lightning's start-up lines and Optuna's own log (the trial lines
    say the same) are left out."""
    import optuna

    from mnist_lit.callbacks import quiet_lightning

    quiet_lightning()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # the heartbeat, its retry callback and the figures are marked experimental; every trial builds the fit's
    # MnistCLI from its own list of flags, on purpose
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")


def build(config: str, fit_args: list[str], out: str, extra: list[str], callbacks: list[Any] | None = None) -> Any:
    """The fit's MnistCLI, built and not run, with the trial's flags and no files written."""
    from lightning.pytorch.cli import SaveConfigCallback

    from mnist_lit.callbacks import InterruptNotice
    from mnist_lit.cli import MnistCLI

    class QuietNotice(InterruptNotice):
        """fit's SIGTERM handling, without fit's line about last.ckpt (a trial keeps none)."""

        def on_exception(self, *args: Any) -> None:
            pass

    args = ["--config", config, *fit_args, *TRIAL_FLAGS, "--output_dir", str(Path(out) / "trial"), *extra]
    cli = MnistCLI(args=args, run=False, trainer_defaults={"callbacks": callbacks or []})
    cli.trainer.callbacks[:] = [QuietNotice() if isinstance(c, InterruptNotice) else c
                                for c in cli.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
    return cli


_DATA: dict[str, Any] = {}


def shared_data(datamodule: Any) -> Any:
    """One data module per data config and process: the images are read (and split) once, not per trial."""
    return _DATA.setdefault(json.dumps(dict(datamodule.hparams), sort_keys=True, default=str), datamodule)


def objective(settings: Settings, stop: Stop) -> Any:
    """The function `study.optimize` calls with each trial: its values fitted, its `val_acc` returned."""
    import optuna
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from optuna_integration import PyTorchLightningPruningCallback

    def fit_trial(trial: Any) -> float:
        trial.set_user_attr("worker", WORKER)
        values = {p.name: p.suggest(trial) for p in settings.space}
        earlier = tried(trial.study).get(tuple(sorted(trial.params.items())))
        if earlier is not None:  # Optuna's FAQ on repeated values: the earlier result, not a second fit
            trial.set_user_attr("repeat_of", earlier.number)
            trial.set_user_attr("note", f"tried in trial {earlier.number}: its result, not fitted again")
            for step, value in earlier.intermediate_values.items():
                trial.report(value, step)
            if earlier.state.name == "PRUNED":
                raise optuna.TrialPruned()
            return earlier.value
        cli = None
        try:
            cli = build(settings.config, settings.fit_args, settings.out, flags(settings.space, values),
                        [PyTorchLightningPruningCallback(trial, monitor=METRIC)])
            cli.trainer.fit(cli.model, datamodule=shared_data(cli.datamodule))
        except optuna.TrialPruned:
            score = float(cli.trainer.callback_metrics[METRIC])
            trial.set_user_attr("note", f"pruned after epoch {cli.trainer.current_epoch + 1} ({METRIC}: {score:.4f})")
            raise
        # Lightning's SIGTERM, its Ctrl-C (sys.exit(1)) and a bad flag's exit are SystemExit, which Optuna
        # lets through with the trial left RUNNING: as Interrupted, Optuna marks it FAIL
        except (SystemExit, KeyboardInterrupt) as e:
            why = ("SIGTERM" if isinstance(e, SIGTERMException) else "Ctrl-C" if isinstance(
                e.__context__ or e, KeyboardInterrupt) else f"a bad setting (exit status {e.code})")
            trial.set_user_attr("note", f"interrupted by {why} in epoch {cli.trainer.current_epoch + 1 if cli else 0}")
            stop.now(why)
            raise Interrupted(why) from e
        if METRIC not in cli.trainer.callback_metrics:
            trial.set_user_attr("note", f"no {METRIC} logged")
            raise UserError(f"trial {trial.number}: the fit logged no {METRIC} (does the config train at least one epoch?)")
        return float(cli.trainer.callback_metrics[METRIC])

    return fit_trial


def line(t: Any) -> str:
    """A finished trial in one line: its number, its values, and its score or when and why it stopped."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
    head = f"Trial {t.number} - {show(t.params)}" + (f" (retry of trial {retried})" if retried is not None else "")
    seconds = f"{t.duration.total_seconds():.1f}s"
    if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs:
        epochs = len(t.intermediate_values)
        return f"{head} - {METRIC}: {t.value:.4f} - {epochs} epoch{'s' * (epochs != 1)} - {seconds}"
    failed = "; marked FAIL in the study" if t.state.name == "FAIL" else ""
    return f"{head} - {t.user_attrs.get('note', 'failed')}{failed} - {seconds}"


class Budget:
    """After each trial: its line, and `study.stop()` once this worker has run its share of the command's
    trials, or once every value of the search space has been tried. A repeat of values already tried does not
    count, nor does a retry of a killed worker's trial: it makes whole the command that asked for that trial."""

    def __init__(self, settings: Settings, share: int) -> None:
        self.left, self.size = share, math.prod(p.size for p in settings.space)

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        print(line(trial), flush=True)
        repeat = "repeat_of" in trial.user_attrs
        retry = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) is not None
        self.left -= trial.state.name in DONE and not repeat and not retry
        if self.left <= 0:
            study.stop()
        elif repeat and len(tried(study)) >= self.size:
            print(f"Every one of the {self.size} values of the search space has been tried: no trial left to run",
                  flush=True)
            study.stop()


def share_cpu(workers: int) -> int:
    """torch's threads split between the workers of one machine (unless OMP_NUM_THREADS says otherwise); the
    number before."""
    import torch

    before = torch.get_num_threads()
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    return before


def work(settings: Settings, index: int, share: int, children: list[Any] | None = None) -> int:
    """Worker `index`'s share of the command's trials, in Optuna's loop in this process, until the time or a
    SIGTERM runs out: 0, 143 after a SIGTERM, 1 when stopped otherwise. `children`: the workers it started."""
    with Stop(children) as stop:
        try:
            study = load(settings, index)
            stop.study = study
            timeout = None if settings.deadline is None else settings.deadline - time.time()
            if not stop.asked and share > 0 and (timeout is None or timeout > 0):
                study.optimize(objective(settings, stop), timeout=timeout, callbacks=[Budget(settings, share)],
                               catch=(Interrupted,))
        except BaseException:
            stop.now("an error")  # this worker failed: the others stop too, their trials marked
            raise
    return 143 if stop.asked == "SIGTERM" else 1 if stop.asked else 0


def worker_process(settings: Settings, index: int, share: int) -> None:
    """Worker `index` of `--workers K`, in a process of its own (multiprocessing's spawn)."""
    quiet()
    share_cpu(settings.workers)
    code = 1
    try:
        code = work(settings, index, share)
    except UserError as e:
        print(f"mnist_lit: error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)  # skip the interpreter's teardown: the study is saved, and nothing else needs closing


def run_workers(settings: Settings) -> int:
    """The command's own process is worker 0; workers 1..K-1 are processes it starts, each with its share of
    the trials. 0, 143 after a SIGTERM, 1 when a worker failed or was killed."""
    import torch

    ctx = multiprocessing.get_context("spawn")
    shares = [settings.trials // settings.workers + (i < settings.trials % settings.workers)
              for i in range(settings.workers)]
    children = [ctx.Process(target=worker_process, args=(settings, i, shares[i])) for i in range(1, settings.workers)]
    for child in children:
        child.start()
    threads = share_cpu(settings.workers)
    try:
        code = work(settings, 0, shares[0], children)
    finally:
        for child in children:
            child.join()
        torch.set_num_threads(threads)
    # a killed worker's trial: a worker still in Optuna's loop finds it stale when it starts its next trial and
    # runs it again; one the others outlived is left to the next `tune` on the study (fail_stale_trials at start)
    lost = ("stays RUNNING (a journal file has no heartbeat)" if settings.storage.startswith("journal:") else
            f"is run again by the next tune on this study, once it has been silent for {3 * settings.heartbeat}s")
    for index, child in enumerate(children, 1):
        if child.exitcode < 0 and code == 0:
            print(f"Worker {index} was killed (signal {-child.exitcode}): its trial under way {lost}", flush=True)
    codes = [code, *(143 if c.exitcode == -signal.SIGTERM else c.exitcode for c in children)]
    return 143 if 143 in codes else 0 if not any(codes) else 1


# ---------------------------------------------------------------- the end: table, best config, figures


def best_config(settings: Settings, probe: Any, best: Any, val_size: int, tutorial: str) -> Path:
    """best.yaml: the user's config and flags with the best trial's values, as `fit --config` takes it
    (validation as the config has it: fashion_mlp trains on all 60,000 images and is tested)."""
    path = Path(settings.out) / "best.yaml"
    probe.parser.exit_on_error = False
    try:
        config = probe.parser.parse_args(["--config", settings.config, *settings.fit_args,
                                          *flags(settings.space, best.params), "--output_dir", str(path.parent / "best")])
    finally:
        probe.parser.exit_on_error = True
    head = (f"# {tutorial}, tuned by `python -m mnist_lit tune`: trial {best.number} of study {settings.study!r}, "
            f"{METRIC} {best.value:.4f} on a hold-out of {val_size:,} training images\n"
            f"# {show(best.params)}\n# train it: python -m mnist_lit fit --config {path}\n")
    atomic.write_text(path, head + probe.parser.dump(config, skip_none=False))
    return path


def figures(study: Any, out: Path) -> list[Path]:
    """Optuna's own figures: each trial's score and the best so far; the score against each hyperparameter; how
    much each hyperparameter mattered, by fANOVA over every trial (Optuna's default, PED-ANOVA, looks among the
    best trials only: on KerasTuner's space, where those all have lr 1e-3, it gives lr 1%; docs/tuning.md)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as plots

    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    paths = []
    for name, draw in (("history", plots.plot_optimization_history), ("slices", plots.plot_slice),
                       ("importances", lambda s, **kw: plots.plot_param_importances(s, evaluator=evaluator, **kw))):
        with warnings.catch_warnings():  # few trials: the evaluator warns, and the bars show it
            warnings.simplefilter("ignore")
            try:
                first = getattr(draw(study, target_name=METRIC), "flat", [None])[0] or plt.gca()
            except (ValueError, RuntimeError):  # importances of a single finished trial, or of equal scores
                continue
        if name == "importances":
            first.set_title("Hyperparameter importances (fANOVA)", loc="left")  # Optuna's title, with its method
        atomic.write_bytes_from(out / f"{name}.png", lambda f: first.figure.savefig(f, format="png", dpi=110,
                                                                                    bbox_inches="tight"))
        plt.close(first.figure)
        paths.append(out / f"{name}.png")
    return paths


def finish(settings: Settings, probe: Any, study: Any, val_size: int, tutorial: str) -> None:
    """The table of every trial (Optuna's trials_dataframe), the best trial and its config, the figures."""
    out = Path(settings.out)
    frame = study.trials_dataframe(attrs=("number", "state", "params", "value", "duration", "user_attrs",
                                          "system_attrs"))
    if frame.empty:
        print("No trials in the study yet.", flush=True)
        return
    columns = {"number": "trial", "state": "state", **{f"params_{p.name}": p.name for p in settings.space},
               "value": METRIC, "duration": "seconds", "system_attrs_failed_trial": "retry_of", "user_attrs_note": "note"}
    frame = frame.reindex(columns=list(columns)).rename(columns=columns)
    frame["seconds"] = frame["seconds"].dt.total_seconds().round(1)
    frame[METRIC] = frame[METRIC].map("{:.4f}".format).replace("nan", None)
    frame["retry_of"] = frame["retry_of"].astype("Int64")  # RetryHeartbeatStaleTrialCallback's record
    print(f"\nAll trials of study {settings.study!r} ({describe_url(settings.storage)}):", flush=True)
    print(frame.astype(object).fillna("-").to_string(index=False), flush=True)
    atomic.write_text(out / "trials.csv", frame.to_csv(index=False))
    if not (frame["state"] == "COMPLETE").any():
        print(f"No trial has finished, so there is no best one yet; table: {out / 'trials.csv'}", flush=True)
        return
    best = study.best_trial
    path = best_config(settings, probe, best, val_size, tutorial)
    pictures = "  ".join(map(str, figures(study, out)))
    print(f"\nBest: trial {best.number} - {show(best.params)} - {METRIC}: {best.value:.4f} "
          f"(hold-out of {val_size:,} training images)", flush=True)
    print(f"Config: {path}   (train it: python -m mnist_lit fit --config {path})", flush=True)
    print(f"Table: {out / 'trials.csv'}   Figures: {pictures}", flush=True)


# ---------------------------------------------------------------- the command


class _OneLine(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage block and message: one line, like the other commands
        raise UserError(f"tune: {message} (--help lists the options)")


def parser() -> argparse.ArgumentParser:
    p = _OneLine(
        prog="python -m mnist_lit tune",
        description="Search a tutorial's hyperparameters with Optuna (TPE sampler, Hyperband pruning on "
                    f"{METRIC} of a hold-out of the training images). Flags not listed here (--trainer.max_epochs 3, "
                    "--data.data_dir ...) go to every trial's fit, as `fit` takes them.")
    p.add_argument("--config", "-c", required=True, help="the tutorial's config, as fit takes it (fashion_mlp)")
    p.add_argument("--space", help="the search space YAML (default: configs/tune/<tutorial>.yaml)")
    p.add_argument("--trials", type=int, default=20, help="trials this command adds to the study, across its workers (20); 0: only "
                   "the table, best config and figures of the study as it stands")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (the ones under way finish)")
    p.add_argument("--storage", help="an Optuna storage: sqlite:///PATH, postgresql+psycopg://USER:PASS@HOST/DB, "
                   "mysql+pymysql://..., or journal:PATH for a journal file (default: sqlite in --output_dir)")
    p.add_argument("--study", help="the study's name in the storage (default: the tutorial's name)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine searching the study together (1)")
    p.add_argument("--pruner", choices=("hyperband", "median", "none"), default="hyperband",
                   help="how weak trials are stopped early (hyperband)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (0); -1: a fresh one every run")
    p.add_argument("--heartbeat", type=int, default=10, help="seconds between a running trial's heartbeats in an "
                   "SQLite or PostgreSQL study (10); a trial silent for three is failed and run again")
    p.add_argument("--output_dir", help="the study, best.yaml, trials.csv, the figures (default: checkpoints/<tutorial>_tune)")
    return p


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    opts, rest = parser().parse_known_args(argv)
    for flag in (arg.split("=", 1)[0] for arg in rest):
        if flag in OWN_FLAGS:
            raise UserError(f"tune: {flag} is not a tune option (tune's own: --output_dir)")
        if flag == "--data.val":
            raise UserError("tune: --data.val is set by tune: trials validate on a hold-out of the training "
                            "images (--data.val_size sets its size), never on the test set")
    for name, low in (("trials", 0), ("workers", 1), ("heartbeat", 1)):
        if getattr(opts, name) < low:
            raise UserError(f"--{name} {getattr(opts, name)}: {low} or more")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UserError(f"--timeout {opts.timeout}: above 0 seconds")
    return opts, rest


def check_values(probe: Any, config: str, fit_args: list[str], space: list[Param], space_path: Path) -> None:
    """Every value the space can give is one the config's types accept (units: a positive whole number)."""
    from mnist_lit.cli import flag_problem

    probe.parser.exit_on_error = False
    try:
        for p in space:
            for value in p.spec.get("choices") or (p.spec["low"], p.spec["high"]):
                try:
                    probe.parser.parse_args(["--config", config, *fit_args, *TRIAL_FLAGS, *flags([p], {p.name: value})])
                except Exception as e:
                    raise UserError(f"{space_path}: {p.name} = {value!r}: {flag_problem(str(e))}") from None
    finally:
        probe.parser.exit_on_error = True


def main(argv: list[str]) -> int:
    opts, fit_args = split_args(argv)
    for module in ("optuna", "optuna_integration", "pandas", "sklearn"):  # the tune extra
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"tune needs {module}: pip install -e '.[tune]' (make test installs it)") from None
    quiet()
    return tune(opts, fit_args)


def tune(opts: argparse.Namespace, fit_args: list[str]) -> int:
    import optuna

    from mnist_lit.cli import resolve_config

    config = resolve_config(opts.config)
    # the fit the trials run, built once without hyperparameters: a bad flag or config fails here, in one
    # line, before any storage or worker is touched
    probe = build(config, fit_args, opts.output_dir or "checkpoints/tune", [])
    tutorial = probe.model.name
    out = Path(opts.output_dir or Path("checkpoints") / f"{tutorial}_tune")
    space_path = Path(opts.space) if opts.space else SPACE_DIR / f"{tutorial}.yaml"
    if not opts.space and not space_path.is_file():
        raise UserError(f"tune: no search space for {tutorial} in {SPACE_DIR}; write one like "
                        f"configs/tune/fashion_mlp.yaml and pass --space FILE")
    # what each section takes, as the fit's own parser read it (the model's arguments are its tutorial's)
    known = {section: {k.split(".")[0] for k in names.keys()} - {"weights", "dataset", "val"} for section, names in
             (("model", probe.config.model.init_args), ("data", probe.config.data), ("trainer", probe.config.trainer))}
    space = read_space(space_path, known)
    check_values(probe, config, fit_args, space, space_path)
    out.mkdir(parents=True, exist_ok=True)
    url = opts.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = opts.study or tutorial
    settings = Settings(config, fit_args, space, url, name, str(out), opts.trials,
                        time.time() + opts.timeout if opts.timeout else None, None if opts.seed == -1 else opts.seed,
                        opts.pruner, opts.heartbeat, max(1, min(opts.workers, opts.trials)))
    record = json.dumps({p.name: p.record() for p in space}, sort_keys=True)
    study = open_study(open_storage(url, opts.heartbeat), url, name, record, Path(config).stem)
    val_size = probe.datamodule.hparams.val_size
    shared_data(probe.datamodule).source  # a data folder with a file missing: one line, before any trial
    # a trial whose worker died in an earlier run and has been silent for the grace period: FAIL, and queued
    # again (WAITING), so that this run's first trial is its retry
    optuna.storages.fail_stale_trials(study)
    before = len(study.trials)
    print(f"Study {name!r} in {describe_url(url)}: {before} trial{'s' * (before != 1)} so far; adding {opts.trials} "
          f"on {settings.workers} worker{'s' * (settings.workers != 1)}, scored by {METRIC} on a hold-out of "
          f"{val_size:,} training images", flush=True)
    code = run_workers(settings) if opts.trials else 0
    if code == 143:
        done = sum(t.state.name in DONE for t in study.get_trials(deepcopy=False))
        print(f"mnist_lit: stopped by SIGTERM: the study keeps its {done} finished trial{'s' * (done != 1)}, the one "
              "under way is marked FAIL (its line above); the same command goes on with the study", file=sys.stderr, flush=True)
        return 143
    if code == 0:
        finish(settings, probe, study, val_size, tutorial)
    return code
