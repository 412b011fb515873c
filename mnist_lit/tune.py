"""`python -m mnist_lit tune`: search a tutorial's hyperparameters with Optuna, on one machine or many.

Each trial is the `fit` that `--config` describes, with the trial's hyperparameters set as their flags would
set them, validated on a seeded hold-out of the training images (`--data.val holdout`; never the test set).
A TPE sampler proposes the values; Hyperband (or the median rule) stops weak trials early on `val_acc`
through Optuna's `PyTorchLightningPruningCallback`. The study lives in a storage (a SQLite file in the
output folder unless `--storage` names another), so a second run of the same command adds trials to it,
and several processes (`--workers`) or machines (one storage URL) can search it together.

At the end: the best trial, a config that `fit --config` trains (`best.yaml`), a table of every trial
(printed and in `trials.csv`) and a figure of the search (`search.png`). docs/tuning.md is the how-to.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import inspect
import json
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from mnist_lit import atomic
from mnist_lit.errors import UserError

METRIC = "val_acc"
SPACE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tune"
# the trial's own settings: what makes it a tuning trial and not a fit (validation on the hold-out, no files)
TRIAL_FLAGS = ("--data.val", "holdout", "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
               "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0")
OWN_FLAGS = ("--output_dir", "--ckpt_path")  # fit's flags that tune sets itself
STATES = ("COMPLETE", "PRUNED")  # trials that count as done


# ---------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Param:
    """One hyperparameter of the space: a range (`low`, `high`, optional `step`, `log`) or `choices`."""

    name: str  # as written in the space file
    key: str  # the config key it sets: model.init_args.units, data.batch_size, trainer.max_epochs
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.whole:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def record(self) -> dict[str, Any]:
        """What the study remembers of this parameter (compared when a run resumes it)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}

    def corners(self) -> list[Any]:
        """Values to check against the config's types before anything runs."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def init_arguments(*classes: type) -> set[str]:
    """The named arguments of these classes' __init__ and those of their bases it passes **kwargs on to."""
    names: set[str] = set()
    for cls in classes:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break
    return names


def space_key(name: str) -> tuple[str, str]:
    """(section, config key) of a name in the space file: a bare name is the model's argument."""
    section, dot, rest = name.partition(".")
    if not dot:
        return "model", f"model.init_args.{name}"
    if section == "model":
        return "model", f"model.init_args.{rest.removeprefix('init_args.')}"
    return section, name


def read_space(path: Path, known: dict[str, set[str]]) -> list[Param]:
    """The space file's parameters, checked: every name is an argument of the model, the data module or
    the Trainer (`known`), and every range holds at least one value."""
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
        arg = key.rsplit(".", 1)[-1]
        if section not in known or arg not in known[section]:
            options = ", ".join(sorted(known.get(section, known["model"])))
            what = {"data": "the data module", "trainer": "the Trainer"}.get(section, "the model")
            raise UserError(f"{where}: not an argument of {what}; it takes {options}")
        if not isinstance(spec, dict):
            raise UserError(f"{where}: give {{low: A, high: B}} (with step: or log: if wanted) or {{choices: [...]}}")
        extra = set(spec) - {"low", "high", "step", "log", "choices"}
        if extra:
            raise UserError(f"{where}: unknown field {', '.join(sorted(map(str, extra)))} (low, high, step, log or choices)")
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"}:
                raise UserError(f"{where}: choices cannot be given with low, high, step or log")
            if not isinstance(choices, list) or not choices:
                raise UserError(f"{where}: empty range: choices must list at least one value")
            if any(not isinstance(c, (int, float, str, bool)) and c is not None for c in choices):
                raise UserError(f"{where}: choices must be plain values (numbers, strings, true/false, null)")
            params.append(Param(str(name), key, choices=tuple(choices)))
            continue
        if "low" not in spec or "high" not in spec:
            raise UserError(f"{where}: a range needs both low and high (or give choices)")
        low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
        numbers = [v for v in (low, high, step) if v is not None]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers):
            raise UserError(f"{where}: low, high and step must be numbers")
        if not isinstance(log, bool):
            raise UserError(f"{where}: log must be true or false")
        if low > high:
            raise UserError(f"{where}: empty range: low {low} is above high {high}")
        if step is not None and step <= 0:
            raise UserError(f"{where}: step must be above 0, not {step}")
        if log and low <= 0:
            raise UserError(f"{where}: a log range must start above 0, not at {low}")
        if log and step is not None:
            raise UserError(f"{where}: give step or log, not both")
        params.append(Param(str(name), key, low=low, high=high, step=step, log=log))
    return params


def space_record(params: list[Param]) -> str:
    return json.dumps({p.name: p.record() for p in params}, sort_keys=True)


def flags(params: list[Param], values: dict[str, Any]) -> list[str]:
    """The command-line flags that set these values, as `fit` would take them."""
    out = []
    for p in params:
        value = values[p.name]
        out.append(f"--{p.key}={'null' if value is None else json.dumps(value) if isinstance(value, bool) else value}")
    return out


def show(values: dict[str, Any]) -> str:
    return " - ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items())


# ---------------------------------------------------------------- storage and study


def describe_url(url: str) -> str:
    """The storage URL without its password, for messages."""
    if url.startswith("journal:"):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


_STORAGES: dict[str, Any] = {}


def open_storage(url: str) -> Any:
    """An Optuna storage from a URL: `journal:PATH` is a journal file (processes on one machine, or a
    shared file system with working locks); anything else is an SQLAlchemy URL (sqlite, postgresql,
    mysql). One per URL in a process. One line when it cannot be reached."""
    if url not in _STORAGES:
        for attempt in range(5):
            try:
                _STORAGES[url] = _open_storage(url)
                break
            except _SchemaRace:  # two machines creating Optuna's tables at once: the other one won
                time.sleep(0.5 * (attempt + 1))
        else:
            _STORAGES[url] = _open_storage(url, retry=False)
    return _STORAGES[url]


class _SchemaRace(Exception):
    pass


def _open_storage(url: str, retry: bool = True) -> Any:
    import optuna

    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:").removeprefix("//"))
            if not path.parent.is_dir():
                raise UserError(f"--storage {url}: no folder {path.parent} for the journal file")
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            # the open(O_EXCL) lock: works where symlinks do not (some network file systems)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path), JournalFileOpenLock(str(path))))
        engine: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            engine = {"connect_args": {"timeout": 60}}  # several workers wait for the file's lock, not fail
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except UserError:
        raise
    except (Exception, SystemExit) as e:  # sqlalchemy's errors, a missing driver (ImportError), a bad URL
        if retry and type(e).__name__ in ("IntegrityError", "ProgrammingError") and (
                "already exists" in str(e) or "duplicate key" in str(e)):
            raise _SchemaRace from e
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
        study.set_user_attr("space", space)
        study.set_user_attr("config", config)
        study.set_user_attr("metric", METRIC)
    elif held != space:
        raise UserError(f"study {name!r} in {describe_url(url)} searched another space ({held}), not this one "
                        f"({space}); give --study a new name, or search the space it holds")
    return study


def make_sampler(seed: int | None) -> Any:
    import optuna

    # constant_liar: a trial under way counts as a poor one, so workers running at once try different values
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, constant_liar=True)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "hyperband":  # KerasTuner's tutorial's choice; the resource is the epoch
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


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
    workers: int = 1
    tutorial: str = ""


class Stop:
    """SIGTERM (or Ctrl-C) in a worker: no new trial starts; the one under way stops at its next step.
    In the command's own process, the signal also goes on to the worker processes it started."""

    def __init__(self) -> None:
        self.asked: str | None = None
        self.notice: Any = None  # the running trial's InterruptNotice
        self.children: list[Any] = []  # multiprocessing.Process

    def listen(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.asked = "SIGTERM"
        if self.notice is not None:
            self.notice.sigterm = True
        for child in self.children:
            if child.pid is not None and child.exitcode is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


class Tickets:
    """The command's trial budget, shared by its workers: each trial takes one before it starts."""

    def __init__(self, total: int, shared: Any = None) -> None:
        self.left = shared if shared is not None else multiprocessing.get_context("spawn").Value("i", total, lock=True)

    def take(self) -> bool:
        with self.left.get_lock():
            if self.left.value <= 0:
                return False
            self.left.value -= 1
            return True


LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Only the trial lines: Lightning's start-up lines and Optuna's own trial log are left out (and put
    back afterwards, for a caller in the same process)."""
    import optuna

    from mnist_lit.callbacks import quiet_lightning

    quiet_lightning()
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    verbosity = optuna.logging.get_verbosity()
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # every trial builds the fit's MnistCLI from its own list of flags, on purpose
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            optuna.logging.set_verbosity(verbosity)


def build(settings: Settings, extra: list[str], callbacks: list[Any] | None = None) -> Any:
    """The fit's MnistCLI, built and not run, with the trial's flags and no files written."""
    from lightning.pytorch.cli import SaveConfigCallback

    from mnist_lit.cli import MnistCLI

    args = ["--config", settings.config, *settings.fit_args, *TRIAL_FLAGS, "--output_dir",
            str(Path(settings.out) / "trial"), *extra]
    cli = MnistCLI(args=args, run=False, trainer_defaults={"callbacks": callbacks or []})
    cli.trainer.callbacks[:] = [c for c in cli.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
    return cli


_DATA: dict[str, Any] = {}


def shared_data(datamodule: Any) -> Any:
    """One data module per data config and process: the images are read (and split) once, not per trial."""
    key = json.dumps(dict(datamodule.hparams), sort_keys=True, default=str)
    return _DATA.setdefault(key, datamodule)


def run_trial(study: Any, settings: Settings, stop: Stop, worker: str) -> str:
    """Ask the study for a trial, fit it and tell the study how it went. Returns the trial's line."""
    import optuna
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from optuna.trial import TrialState
    from optuna_integration import PyTorchLightningPruningCallback

    from mnist_lit.callbacks import InterruptNotice

    class QuietNotice(InterruptNotice):
        """fit's SIGTERM handling, without fit's line about last.ckpt (a trial keeps none)."""

        def on_exception(self, *args: Any) -> None:
            pass

    trial = study.ask()
    trial.set_user_attr("worker", worker)
    values = {p.name: p.suggest(trial) for p in settings.space}
    head = f"Trial {trial.number} - {show(values)}"
    start = time.perf_counter()
    cli = None
    try:
        cli = build(settings, flags(settings.space, values), [PyTorchLightningPruningCallback(trial, monitor=METRIC)])
        callbacks = cli.trainer.callbacks
        notice = next(i for i, c in enumerate(callbacks) if isinstance(c, InterruptNotice))
        callbacks[notice] = stop.notice = QuietNotice()
        stop.notice.sigterm = stop.asked is not None
        cli.trainer.fit(cli.model, datamodule=shared_data(cli.datamodule))
    except optuna.TrialPruned:
        seconds = time.perf_counter() - start
        keep(trial, cli, seconds)
        study.tell(trial, state=TrialState.PRUNED)
        last = trial_last(trial)
        return f"{head} - pruned after epoch {last[0] + 1} ({METRIC}: {last[1]:.4f}) - {seconds:.1f}s"
    except BaseException as e:  # SIGTERM, Ctrl-C, a bad value, a bug: the trial is marked, never left running
        seconds = time.perf_counter() - start
        epoch = cli.trainer.current_epoch + 1 if cli is not None else 0
        # Lightning turns Ctrl-C into sys.exit(1); a bad flag's one line (already printed) into SystemExit(2)
        ctrl_c = isinstance(e, KeyboardInterrupt) or isinstance(e.__context__, KeyboardInterrupt)
        why = ("SIGTERM" if isinstance(e, SIGTERMException) else "Ctrl-C" if ctrl_c
               else f"a bad setting (exit status {e.code})" if isinstance(e, SystemExit)
               else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
        note = f"interrupted by {why} in epoch {epoch}" if why in ("SIGTERM", "Ctrl-C") else f"failed in epoch {epoch}: {why}"
        trial.set_user_attr("note", note)
        keep(trial, cli, seconds)
        study.tell(trial, state=TrialState.FAIL)
        print(f"{head} - {note}; marked FAIL in the study - {seconds:.1f}s", flush=True)
        if isinstance(e, SIGTERMException):
            stop.asked = "SIGTERM"
            return ""
        raise
    finally:
        stop.notice = None
    seconds = time.perf_counter() - start
    metrics = cli.trainer.callback_metrics
    if METRIC not in metrics:
        trial.set_user_attr("note", f"no {METRIC} logged")
        study.tell(trial, state=TrialState.FAIL)
        raise UserError(f"trial {trial.number}: the fit logged no {METRIC} (does the config train at least one epoch?)")
    score = float(metrics[METRIC])
    keep(trial, cli, seconds)
    study.tell(trial, score)
    epochs = cli.trainer.current_epoch
    return f"{head} - {METRIC}: {score:.4f} - {epochs} epoch{'s' * (epochs != 1)} - {seconds:.1f}s"


def keep(trial: Any, cli: Any, seconds: float) -> None:
    """The trial's wall time and its epochs' own seconds (the rest is the trial's overhead)."""
    from mnist_lit.callbacks import RunRecorder

    trial.set_user_attr("seconds", round(seconds, 3))
    if cli is not None:
        recorder = next((c for c in cli.trainer.callbacks if isinstance(c, RunRecorder)), None)
        if recorder is not None:
            trial.set_user_attr("epoch_seconds", recorder.epoch_seconds)


def trial_last(trial: Any) -> tuple[int, float]:
    values = trial.storage.get_trial(trial._trial_id).intermediate_values
    step = max(values) if values else -1
    return step, values.get(step, float("nan"))


def worker_loop(settings: Settings, tickets: Tickets, index: int, stop: Stop | None = None, ready: Any = None) -> int:
    """One worker: trials until the budget, the time or a SIGTERM runs out. 0, or 143 after a SIGTERM."""
    stop = stop or Stop()
    before = signal.getsignal(signal.SIGTERM)
    stop.listen()
    try:
        with quiet():
            return _trials(settings, tickets, index, stop, ready)
    finally:
        signal.signal(signal.SIGTERM, before)


def _trials(settings: Settings, tickets: Tickets, index: int, stop: Stop, ready: Any) -> int:
    import optuna

    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage))
    seed = None
    if settings.seed is not None:  # a worker's own seed, new on every run: a resumed study gets new values
        text = f"{settings.seed}:{index}:{len(study.trials)}"
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    study.sampler, study.pruner = make_sampler(seed), make_pruner(settings.pruner)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    if ready is not None:  # the workers of one command start together (the first would otherwise run
        try:               # trials alone while the others import torch)
            ready.wait(timeout=120)
        except threading.BrokenBarrierError:  # a worker died on its way: the others go on
            pass
    while stop.asked is None:
        if settings.deadline is not None and time.time() >= settings.deadline:
            break
        if not tickets.take():
            break
        line = run_trial(study, settings, stop, worker)
        if line:
            print(line, flush=True)
    return 143 if stop.asked == "SIGTERM" else 0


@contextlib.contextmanager
def cpu_share(workers: int) -> Iterator[None]:
    """torch's threads split between the workers of one machine (unless OMP_NUM_THREADS says otherwise)."""
    import torch

    before = torch.get_num_threads()
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_process(settings: Settings, shared: Any, ready: Any, index: int) -> None:
    """Worker `index` of `--workers K`, in a process of its own (multiprocessing's spawn)."""
    try:
        with cpu_share(settings.workers):
            code = worker_loop(settings, Tickets(0, shared), index, ready=ready)
    except UserError as e:
        print(f"mnist_lit: error: {e}", file=sys.stderr, flush=True)
        code = 1
    sys.stdout.flush()
    os._exit(code)  # skip the interpreter's teardown: the study is saved, and nothing else needs closing


def run_workers(settings: Settings) -> int:
    """The command's own process is worker 0; workers 1..K-1 are processes it starts (they share its trial
    budget, and SIGTERM to it reaches them). 0, 143 after a SIGTERM, 1 when a worker failed."""
    ctx = multiprocessing.get_context("spawn")
    shared = ctx.Value("i", settings.trials, lock=True)
    ready = ctx.Barrier(settings.workers)
    stop = Stop()
    stop.children = [ctx.Process(target=worker_process, args=(settings, shared, ready, i))
                     for i in range(1, settings.workers)]
    for child in stop.children:
        child.start()
    try:
        with cpu_share(settings.workers):
            code = worker_loop(settings, Tickets(0, shared), 0, stop, ready)
    except BaseException:
        ready.abort()
        stop._on_signal(signal.SIGTERM, None)  # this worker failed: the others stop too, their trials marked
        raise
    finally:
        for child in stop.children:
            child.join()
    codes = [code, *(child.exitcode for child in stop.children)]
    if 143 in codes or stop.asked:
        return 143
    return 0 if all(c == 0 for c in codes) else 1


# ---------------------------------------------------------------- the end: table, best config, figure


def trial_rows(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        steps = t.intermediate_values
        value = t.value if t.value is not None else (steps[max(steps)] if steps else None)
        rows.append({"trial": t.number, "state": t.state.name,
                     **{p.name: t.params.get(p.name) for p in params},
                     METRIC: value, "epochs": len(steps), "seconds": t.user_attrs.get("seconds"),
                     "note": t.user_attrs.get("note", "")})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def cell(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}" if key == METRIC else f"{v:.1f}" if key == "seconds" else f"{v:.4g}"
        return str(v)

    keys = list(rows[0]) if rows else []
    cells = [[cell(k, r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, text.getvalue())


def best_config(settings: Settings, probe: Any, best: Any, val_size: int) -> Path:
    """best.yaml: the user's config and flags with the best trial's values, as `fit --config` takes it
    (validation as the config has it: fashion_mlp trains on all 60,000 images and is tested)."""
    out = Path(settings.out)
    args = ["--config", settings.config, *settings.fit_args, *flags(settings.space, best.params),
            "--output_dir", str(out / "best")]
    parser = probe.parser
    parser.exit_on_error = False
    try:
        config = parser.parse_args(args)
    finally:
        parser.exit_on_error = True
    path = out / "best.yaml"
    head = (f"# {settings.tutorial}, tuned by `python -m mnist_lit tune`: trial {best.number} of study {settings.study!r}, "
            f"{METRIC} {best.value:.4f} on a hold-out of {val_size:,} training images\n"
            f"# {show(best.params)}\n# train it: python -m mnist_lit fit --config {path}\n")
    atomic.write_text(path, head + parser.dump(config, skip_none=False))
    return path


def param_importances(study: Any, finished: int) -> tuple[dict[str, float], str]:
    """How much of the spread in the score each hyperparameter explains: fANOVA over every finished trial
    (a random forest, scikit-learn's), else Optuna's default PED-ANOVA, which looks only at the best trials
    (with the KerasTuner space those all have lr 1e-3, so it calls lr unimportant). Empty with too few."""
    import optuna

    if finished < 2:
        return {}, ""
    try:
        import sklearn  # noqa: F401

        evaluator, method = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, method = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    try:
        with warnings.catch_warnings():  # few trials: the evaluators warn, and the bars show it
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), method
    except Exception:  # too few distinct results for the evaluator
        return {}, ""


def figure(study: Any, params: list[Param], path: Path) -> Path:
    """The search on one page: each trial's score and the best so far; the score against each
    hyperparameter; and how much each hyperparameter mattered (`param_importances`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    panels = 2 + len(params)
    cols = 2 if panels <= 4 else 3
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    axes = axes.ravel()

    def last(t: Any) -> float:
        return t.intermediate_values[max(t.intermediate_values)]

    ax = axes[0]
    ax.scatter([t.number for t in done], [t.value for t in done], color="tab:blue", label="finished", zorder=3)
    ax.scatter([t.number for t in pruned], [last(t) for t in pruned], color="tab:gray", marker="x",
               label="pruned (its last epoch)", zorder=3)
    if done:
        order = sorted(done, key=lambda t: t.number)
        best, xs, ys = -math.inf, [], []
        for t in order:
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        last_number = max(t.number for t in trials)
        ax.step([*xs, last_number], [*ys, ys[-1]], where="post", color="tab:orange", label="best so far")
    ax.set(title="Search history", xlabel="trial", ylabel=f"{METRIC} (hold-out)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.grid(alpha=0.3)

    for ax, p in zip(axes[1:], params):
        for group, style in ((done, dict(color="tab:blue", label="finished")),
                             (pruned, dict(color="tab:gray", marker="x", label="pruned"))):
            pts = [(t.params[p.name], t.value if t.state == TrialState.COMPLETE else last(t))
                   for t in group if p.name in t.params]
            if pts:
                if p.choices is not None:
                    labels = [str(c) for c in p.choices]
                    ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts], **style)
                else:
                    ax.scatter([x for x, _ in pts], [y for _, y in pts], **style)
        if p.choices is not None:
            ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices])
        elif p.log:
            ax.set_xscale("log")
        ax.set(title=f"{METRIC} against {p.name}", xlabel=p.name, ylabel=METRIC)
        ax.grid(alpha=0.3)

    ax = axes[1 + len(params)]
    importances, method = param_importances(study, len(done))
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:green")
        ax.set(title=f"Hyperparameter importance ({method})", xlabel="share of the spread in " + METRIC)
    else:
        ax.text(0.5, 0.5, "importances need at least two\nfinished trials with different scores",
                ha="center", va="center", transform=ax.transAxes)
        ax.set(title="Hyperparameter importance")
        ax.set_axis_off()
    for ax in axes[2 + len(params):]:
        ax.set_axis_off()
    fig.suptitle(f"study {study.study_name!r}: {len(done)} finished, {len(pruned)} pruned", fontsize=11)
    fig.tight_layout()
    atomic.write_bytes_from(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def finish(settings: Settings, probe: Any, study: Any, val_size: int) -> None:
    """The table of every trial, the best trial and its config, the figure."""
    from optuna.trial import TrialState

    out = Path(settings.out)
    rows = trial_rows(study, settings.space)
    if not rows:
        print("No trials in the study yet.", flush=True)
        return
    print(f"\nAll trials of study {settings.study!r} ({describe_url(settings.storage)}):", flush=True)
    print(table(rows), flush=True)
    write_csv(out / "trials.csv", rows)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        print(f"No trial has finished, so there is no best one yet; table: {out / 'trials.csv'}", flush=True)
        return
    best = study.best_trial
    path = best_config(settings, probe, best, val_size)
    pic = figure(study, settings.space, out / "search.png")
    print(f"\nBest: trial {best.number} - {show(best.params)} - {METRIC}: {best.value:.4f} "
          f"(hold-out of {val_size:,} training images)", flush=True)
    print(f"Config: {path}   (train it: python -m mnist_lit fit --config {path})", flush=True)
    print(f"Table: {out / 'trials.csv'}   Figure: {pic}", flush=True)


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
                   "the table, best config and figure of the study as it stands")
    p.add_argument("--timeout", type=float, help="seconds after which no new trial starts (the ones under way finish)")
    p.add_argument("--storage", help="an Optuna storage: sqlite:///PATH, postgresql+psycopg://USER:PASS@HOST/DB, "
                   "mysql+pymysql://..., or journal:PATH for a journal file (default: sqlite in --output_dir)")
    p.add_argument("--study", help="the study's name in the storage (default: the tutorial's name)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine searching the study together (1)")
    p.add_argument("--pruner", choices=("hyperband", "median", "none"), default="hyperband",
                   help="how weak trials are stopped early (hyperband)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (0); -1: a fresh one every run")
    p.add_argument("--output_dir", help="the study, best.yaml, trials.csv, search.png (default: checkpoints/<tutorial>_tune)")
    return p


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    opts, rest = parser().parse_known_args(argv)
    for arg in rest:
        if arg.split("=", 1)[0] in OWN_FLAGS:
            raise UserError(f"tune: {arg.split('=', 1)[0]} is not a tune option (tune's own: --output_dir)")
        if arg.split("=", 1)[0] in ("--data.val",):
            raise UserError("tune: --data.val is set by tune: trials validate on a hold-out of the training "
                            "images (--data.val_size sets its size), never on the test set")
    if opts.trials < 0:
        raise UserError(f"--trials {opts.trials}: 0 or more")
    if opts.workers < 1:
        raise UserError(f"--workers {opts.workers}: at least 1")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UserError(f"--timeout {opts.timeout}: above 0 seconds")
    return opts, rest


def probe_fit(config: str, fit_args: list[str], out: str) -> Any:
    """The fit the trials run, built once without hyperparameters: a bad flag or config fails here, in
    one line, before any storage or worker is touched."""
    settings = Settings(config, fit_args, [], "", "", out, 0, None, None, "none")
    return build(settings, [])


def check_values(probe: Any, settings: Settings, space_path: Path) -> None:
    """Every value the space can give is one the config's types accept (units: a positive whole number)."""
    from mnist_lit.cli import flag_problem

    parser = probe.parser
    parser.exit_on_error = False
    try:
        for p in settings.space:
            for value in p.corners():
                try:
                    parser.parse_args(["--config", settings.config, *settings.fit_args, *TRIAL_FLAGS,
                                       *flags([p], {p.name: value})])
                except Exception as e:
                    raise UserError(f"{space_path}: {p.name} = {value!r}: {flag_problem(str(e))}") from None
    finally:
        parser.exit_on_error = True


def main(argv: list[str]) -> int:
    opts, fit_args = split_args(argv)
    missing = []
    for module in ("optuna", "optuna_integration"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"tune needs {' and '.join(missing)}: pip install -e '.[tune]' (make test installs it)")
    with quiet():
        return tune(opts, fit_args)


def tune(opts: argparse.Namespace, fit_args: list[str]) -> int:
    import lightning as L

    from mnist_lit.cli import resolve_config
    from mnist_lit.data import MNISTDataModule

    config = resolve_config(opts.config)
    probe = probe_fit(config, fit_args, opts.output_dir or "checkpoints/tune")
    tutorial = probe.model.name
    out = Path(opts.output_dir or Path("checkpoints") / f"{tutorial}_tune")
    space_path = Path(opts.space) if opts.space else SPACE_DIR / f"{tutorial}.yaml"
    if not opts.space and not space_path.is_file():
        raise UserError(f"tune: no search space for {tutorial} in {SPACE_DIR}; write one like "
                        f"configs/tune/fashion_mlp.yaml and pass --space FILE")
    known = {"model": init_arguments(type(probe.model)) - {"net", "weights", "dataset"},
             "data": init_arguments(MNISTDataModule) - {"val"},
             "trainer": init_arguments(L.Trainer)}
    space = read_space(space_path, known)
    out.mkdir(parents=True, exist_ok=True)
    url = opts.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = opts.study or tutorial
    deadline = time.time() + opts.timeout if opts.timeout else None
    settings = Settings(config, fit_args, space, url, name, str(out), opts.trials, deadline,
                        None if opts.seed == -1 else opts.seed, opts.pruner, max(1, min(opts.workers, opts.trials)), tutorial)
    check_values(probe, settings, space_path)
    study = open_study(open_storage(url), url, name, space_record(space), Path(config).stem)
    val_size = probe.datamodule.hparams.val_size
    shared_data(probe.datamodule).source  # a data folder with a file missing: one line, before any trial
    before = len(study.trials)
    print(f"Study {name!r} in {describe_url(url)}: {before} trial{'s' * (before != 1)} so far; adding {opts.trials} "
          f"on {settings.workers} worker{'s' * (settings.workers != 1)}, scored by {METRIC} on a hold-out of "
          f"{val_size:,} training images", flush=True)
    if opts.trials == 0:
        code = 0
    elif settings.workers == 1:
        code = worker_loop(settings, Tickets(opts.trials), 0)
    else:
        code = run_workers(settings)
    study = open_study(open_storage(url), url, name, space_record(space), Path(config).stem)
    if code == 143:
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        done = sum(s in STATES for s in states)
        print(f"mnist_lit: stopped by SIGTERM: the study keeps its {done} finished trial{'s' * (done != 1)}, the one "
              "under way is marked FAIL (its line above); the same command goes on with the study", file=sys.stderr, flush=True)
        return 143
    if code != 0:
        return code
    finish(settings, probe, study, val_size)
    return 0
