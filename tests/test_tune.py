"""`python -m mnist_lit tune` (mnist_lit/tune.py): real Optuna studies on the synthetic data, tiny fits.

In this process: the search writes its table, figures and a best config that `fit` trains, a second run
adds trials to the same study, values already tried are not fitted again, and bad input ends in one line.
In processes of their own (slow): two workers sharing a journal-file study, two commands sharing a study on a
PostgreSQL server the test starts, a SIGTERM in the middle of a trial, and a worker SIGKILLed in the middle of
a trial on SQLite and on PostgreSQL, whose trial the next tune runs again.
"""

from __future__ import annotations

import csv
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")
pytest.importorskip("optuna_integration")

from tests.helpers import cli_process, run  # noqa: E402

# two epochs of the synthetic digits (540 training images after a hold-out of 100): a trial takes a second
TINY = ("--trainer.max_epochs", "2", "--data.val_size", "100")


def tune(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["tune", "--config", "fashion_mlp", "--data.data_dir", str(data_root), "--output_dir", str(out), *TINY,
            *extra]


def load(url: str, name: str = "fashion_mlp"):
    """The study, read as any Optuna program reads it (an SQLAlchemy URL as such, a journal file as tune opens it)."""
    from mnist_lit.tune import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url) if url.startswith("journal:") else url)


def trial_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("Trial ")]


def fitted(study) -> list:
    """The trials that ran a fit to its end or its pruning (a repeat of values already tried runs none)."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state.name in ("COMPLETE", "PRUNED") and "repeat_of" not in t.user_attrs]


def assert_shared_fairly(study, trials: int) -> None:
    """`trials` fits, on values no other trial had, every trial finished and none lost, by two workers."""
    got = study.get_trials(deepcopy=False)
    assert {t.state.name for t in got} <= {"COMPLETE", "PRUNED"}, [(t.number, t.state.name) for t in got]
    assert len(fitted(study)) == trials and len({tuple(sorted(t.params.items())) for t in fitted(study)}) == trials
    assert len({t.user_attrs["worker"] for t in got}) == 2, "both workers ran trials"


def test_search_writes_a_config_that_fit_trains_and_resumes(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "tune"
    assert run(*tune(data_root, out, "--trials", "2")) == 0
    printed = capsys.readouterr().out
    lines = trial_lines(printed)
    assert [line.split(" - ")[0] for line in lines] == ["Trial 0", "Trial 1"]
    assert all("units: " in line and "lr: " in line and ("val_acc: " in line) for line in lines), lines
    for name in ("study.db", "best.yaml", "trials.csv", "history.png", "slices.png"):
        assert (out / name).is_file(), name
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["trial"] for r in rows] == ["0", "1"]
    study = load(f"sqlite:///{out / 'study.db'}")
    best = study.best_trial
    assert f"Best: trial {best.number} - " in printed
    config = yaml.safe_load((out / "best.yaml").read_text())
    assert config["model"]["init_args"]["units"] == best.params["units"]
    assert config["model"]["init_args"]["lr"] == best.params["lr"]
    assert config["data"]["val"] == "none", "the best config trains as its tutorial does, on every training image"
    assert 32 <= best.params["units"] <= 512 and best.params["units"] % 32 == 0
    assert best.params["lr"] in (1e-2, 1e-3, 1e-4)
    assert f"python -m mnist_lit fit --config {out / 'best.yaml'}" in printed

    # fit takes the config and trains it (one batch: the full fit is the same code test_cli.py runs)
    assert run("fit", "--config", str(out / "best.yaml"), "--trainer.fast_dev_run", "true") == 0
    assert "Test: loss: " in capsys.readouterr().out

    assert run(*tune(data_root, out, "--trials", "1")) == 0  # the same command again: one more trial
    printed = capsys.readouterr().out
    assert "2 trials so far" in printed
    assert [line.split(" - ")[0] for line in trial_lines(printed)] == ["Trial 2"]
    assert len(load(f"sqlite:///{out / 'study.db'}").trials) == 3

    assert run(*tune(data_root, out, "--trials", "0")) == 0  # the study's table, best config and figure only
    printed = capsys.readouterr().out
    assert not trial_lines(printed) and "3 trials so far" in printed and "Best: trial " in printed


def test_values_already_tried_are_not_fitted_again_and_a_used_up_space_ends(data_root: Path, tmp_path: Path,
                                                                               capsys):
    """Optuna proposes values it has tried (TPE has no memory of its own proposals): such a trial takes the
    earlier result without a fit and does not count; once every value has been tried, the search ends."""
    out = tmp_path / "out"
    space = write_space(tmp_path / "two.yaml", "units: {choices: [32, 64]}\n")
    assert run(*tune(data_root, out, "--space", str(space), "--trials", "3")) == 0
    printed = capsys.readouterr().out
    study = load(f"sqlite:///{out / 'study.db'}")
    assert sorted(t.params["units"] for t in fitted(study)) == [32, 64], "each value fitted once"
    repeats = [t for t in study.trials if "repeat_of" in t.user_attrs]
    assert repeats and all(t.value == study.trials[t.user_attrs["repeat_of"]].value for t in repeats)
    assert "Every one of the 2 values of the search space has been tried: no trial left to run" in printed
    assert "tried in trial " in printed and "not fitted again" in printed

    before = len(study.trials)
    assert run(*tune(data_root, out, "--space", str(space), "--trials", "2")) == 0  # nothing left: one repeat, the end
    assert "Every one of the 2 values" in capsys.readouterr().out
    assert len(study.trials) == before + 1


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("space, says", [
    ("width: {low: 32, high: 512}\n", "width: not an argument of the model; it takes "),
    ("data.shuffle: {choices: [true]}\n", "data.shuffle: not an argument of the data module"),
    # the range's own problems in Optuna's words (its distribution classes check them)
    ("units: {low: 512, high: 32}\n", "units: `low <= high` must hold, but got (low=512, high=32)"),
    ("lr: {choices: []}\n", "lr: The `choices` must contain one or more elements"),
    ("lr: {low: 0, high: 0.1, log: true}\n", "lr: `low > 0` must hold for `log=True`"),
    ("units: {lo: 1, high: 64}\n", "units: IntDistribution.__init__() got an unexpected keyword argument 'lo'"),
    ("units: {choices: [[32, 64]]}\n", "units: Choices for a categorical distribution should be"),
    ("lr: {low: 1e-4, high: 1e-2}\n", "lr: low, high and step must be numbers"),
    ("units: {low: 0, high: 64}\n", "units = 0: --model.init_args.units"),
    ("- units\n", "a search space is a mapping"),
])
def test_a_bad_search_space_is_one_line(space: str, says: str, data_root: Path, tmp_path: Path, capsys):
    path = write_space(tmp_path / "space.yaml", space)
    assert run(*tune(data_root, tmp_path / "out", "--space", str(path))) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnist_lit: error: {path}: ") and err.count("\n") == 1, err
    assert says in err, err
    assert not (tmp_path / "out" / "study.db").exists(), "nothing runs on a bad space"


@pytest.mark.parametrize("url, says", [
    ("postgresql+psycopg://tuner:hidden@127.0.0.1:1/optuna", "cannot be reached: "),
    ("sqlite:////nonexistent-folder/study.db", "cannot be reached: "),
    ("journal:/nonexistent-folder/study.log", "no folder /nonexistent-folder"),
    ("nosuchdb://host/x", "cannot be reached: "),
])
def test_an_unreachable_storage_is_one_line(url: str, says: str, data_root: Path, tmp_path: Path, capsys):
    if url.startswith("postgresql") and not _has("psycopg"):
        pytest.skip("psycopg is not installed (pip install -e '.[tune]')")
    assert run(*tune(data_root, tmp_path / "out", "--storage", url)) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist_lit: error: --storage ") and err.count("\n") == 1, err
    assert says in err and "hidden" not in err, err


def test_a_changed_space_under_the_same_study_name_is_one_line(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    first = write_space(tmp_path / "a.yaml", "units: {low: 32, high: 64, step: 32}\n")
    assert run(*tune(data_root, out, "--space", str(first), "--trials", "1")) == 0
    changed = write_space(tmp_path / "b.yaml", "units: {low: 32, high: 128, step: 32}\n")
    capsys.readouterr()
    assert run(*tune(data_root, out, "--space", str(changed), "--trials", "1")) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist_lit: error: study 'fashion_mlp' in sqlite:///") and err.count("\n") == 1, err
    assert "searched another space" in err and "--study" in err
    assert run(*tune(data_root, out, "--space", str(changed), "--trials", "1", "--study", "wider")) == 0
    assert len(load(f"sqlite:///{out / 'study.db'}").trials) == 1


def test_tune_never_validates_on_the_test_set(data_root: Path, tmp_path: Path, capsys):
    assert run(*tune(data_root, tmp_path / "out", "--data.val", "test")) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnist_lit: error: tune: --data.val is set by tune") and err.count("\n") == 1


# ---------------------------------------------------------------- processes of their own


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running after {timeout}s:\n{out}\n{err}")


@pytest.mark.slow
def test_two_workers_share_a_journal_study(data_root: Path, tmp_path: Path, capsys):
    """--workers 2: this process is worker 0 and starts worker 1; one budget of 5 trials between them."""
    out = tmp_path / "out"
    out.mkdir()
    url = f"journal:{out / 'study.log'}"
    assert run(*tune(data_root, out, "--trials", "5", "--workers", "2", "--storage", url), "--trainer.max_epochs", "3") == 0
    stdout = capsys.readouterr().out  # worker 1's lines go to the terminal, not to capsys
    assert_shared_fairly(load(url), 5)
    assert f"All trials of study 'fashion_mlp' ({url})" in stdout and (out / "best.yaml").is_file()


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server (Debian's `postgresql` binaries) on a Unix socket in a temporary
    folder: its URL. Root cannot run postgres, so as root the server runs as the `postgres` user."""
    if not _has("psycopg"):
        pytest.skip("psycopg is not installed (pip install -e '.[tune]')")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    if not found[-1]:
        pytest.skip("no PostgreSQL server binaries (Debian: apt-get install postgresql; .ci/run does)")
    bin_dir = Path(found[-1]).parent
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None or not shutil.which("runuser"):
            pytest.skip("running as root, with no postgres or nobody user and runuser to start the server as")
        as_user = ["runuser", "-u", user, "--"]
    folder = Path(tempfile.mkdtemp(prefix="mnist_lit-pg-"))
    if as_user:
        shutil.chown(folder, user=as_user[2])
    with socket.socket() as s:  # the socket file's name carries the port: pick one nobody uses
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def step(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)

    try:
        made = step(str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust")
        if made.returncode != 0:
            pytest.skip(f"initdb failed: {(made.stderr or made.stdout).strip().splitlines()[-1:]}")
        started = step(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
                       "-o", f"-p {port} -k {folder} -c listen_addresses=''", "start")
        if started.returncode != 0:
            log = (folder / "log").read_text() if (folder / "log").exists() else started.stderr
            pytest.skip(f"the PostgreSQL server did not start: {log.strip().splitlines()[-1:]}")
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}&port={port}"
    finally:
        step(str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_two_machines_share_a_postgresql_study(postgres: str, data_root: Path, tmp_path: Path, capsys):
    """The many-machines recipe: the same command, run twice at once (a process of its own and this one),
    on one server."""
    other = cli_process(*tune(data_root, tmp_path / "out1", "--trials", "2", "--storage", postgres))
    try:
        assert run(*tune(data_root, tmp_path / "out0", "--trials", "2", "--storage", postgres)) == 0
    finally:
        stdout, stderr = finish(other)
    assert other.returncode == 0, stderr
    numbers = sorted(int(line.split(" - ")[0].split()[1])
                     for out in (stdout, capsys.readouterr().out) for line in trial_lines(out))
    assert numbers == list(range(len(load(postgres).trials))), "every trial reported once, by the command that ran it"
    assert_shared_fairly(load(postgres), 4)


@pytest.mark.slow
def test_sigterm_mid_trial_keeps_the_finished_ones_and_marks_the_interrupted_one(data_root: Path, tmp_path: Path,
                                                                                   capsys):
    out = tmp_path / "out"
    url = f"sqlite:///{out / 'study.db'}"
    assert run(*tune(data_root, out, "--trials", "1")) == 0  # a finished trial, kept
    capsys.readouterr()

    # then a trial that would train for a long time, stopped by SIGTERM to this process once it is under way
    # (as `kill` sends it: tune's handler, then fit's, take it in the main thread)
    sent: list[str] = []

    def send_sigterm_mid_trial() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = load(url).get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            handler = signal.getsignal(signal.SIGTERM)
            if running and callable(handler) and handler is not signal.default_int_handler:
                time.sleep(1.0)  # some epochs in
                if callable(signal.getsignal(signal.SIGTERM)):  # never SIGTERM pytest itself
                    os.kill(os.getpid(), signal.SIGTERM)
                    sent.append("SIGTERM")
                return
            time.sleep(0.2)

    sender = threading.Thread(target=send_sigterm_mid_trial, daemon=True)
    sender.start()
    code = run(*tune(data_root, out, "--trials", "3", "--pruner", "none"), "--trainer.max_epochs", "1000000")
    sender.join()
    captured = capsys.readouterr()
    assert sent and code == 143, captured
    assert captured.err.startswith("mnist_lit: stopped by SIGTERM: the study keeps its 1 finished trial, ") \
        and captured.err.count("\n") == 1, captured.err
    trials = load(url).get_trials(deepcopy=False)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "FAIL")]
    assert trials[1].user_attrs["note"].startswith("interrupted by SIGTERM in epoch ")
    assert "Trial 1 - " in captured.out and "interrupted by SIGTERM" in captured.out
    assert signal.getsignal(signal.SIGTERM) is not None


def kill_mid_trial(url: str, pid: int) -> int:
    """SIGKILL the process running a trial other than process `pid` (each trial records its worker's host:pid)
    once that trial's fit is under way (an epoch reported, and not a repeat of values already tried, whose retry
    would not be fitted either): its pid, or 0 after 3 minutes."""
    study, deadline = None, time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            study = study or load(url)  # one connection, not one per look: SQLite's lock is shared with the workers
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except Exception:  # no study yet, or Optuna's tables half made
            running = []
        for t in running:
            worker = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if worker not in (0, pid) and t.intermediate_values and "repeat_of" not in t.user_attrs:
                os.kill(worker, signal.SIGKILL)
                return worker
        time.sleep(0.2)
    return 0


def assert_made_whole(url: str, asked: int) -> None:
    """The asked number of fits, the killed one FAIL and run again (RetryHeartbeatStaleTrialCallback's
    record), and nothing left RUNNING."""
    study = load(url)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and "WAITING" not in states, states
    failed = [t.number for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1, states
    retries = [t for t in fitted(study) if t.system_attrs.get("failed_trial") == failed[0]]
    assert len(retries) == 1 and retries[0].params == study.trials[failed[0]].params, [
        (t.number, t.state.name, t.params, t.user_attrs, t.system_attrs) for t in study.trials]
    assert len(fitted(study)) == asked


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_a_killed_worker_s_trial_is_run_again_by_the_next_tune(storage: str, request, data_root: Path,
                                                                 tmp_path: Path, capsys):
    """--workers 2, worker 1 SIGKILLed in the middle of its trial: the command says so and exits 1 once worker 0
    has run its trial; the same command again, once the heartbeat is stale (3 s with --heartbeat 1), first runs
    the killed trial again, then the one trial it asks for."""
    url = request.getfixturevalue("postgres") if storage == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    args = ("--storage", url, "--heartbeat", "1", "--pruner", "none", "--trainer.max_epochs", "10")
    first = cli_process(*tune(data_root, tmp_path / "out1", "--trials", "2", "--workers", "2", *args))
    try:
        killed = kill_mid_trial(url, first.pid)
    finally:
        stdout, stderr = finish(first)
    assert killed and first.returncode == 1, (first.returncode, stdout, stderr)
    assert "Worker 1 was killed (signal 9): its trial under way is run again by the next tune" in stdout, stdout
    time.sleep(3.5)  # the grace period of --heartbeat 1: three silent seconds
    assert run(*tune(data_root, tmp_path / "out2", "--trials", "1", *args)) == 0
    printed = capsys.readouterr().out
    assert "(retry of trial " in trial_lines(printed)[0] and len(trial_lines(printed)) >= 2, printed
    assert_made_whole(url, 3)
