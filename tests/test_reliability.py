"""Runs that are killed, interrupted, diverge, repeat, share a folder, or fill the disk, and what they leave."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from tests.helpers import REPO, cli_process, default_sigint, fit, start_up_lines_removed, wait_for


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_uninterrupted_result(sig: signal.Signals, data_root: Path, tmp_path: Path):
    common = ["fit", "--config", "cnn", "--data.data_dir", str(data_root), "--trainer.max_epochs", "80"]
    assert fit("cnn", data_root, tmp_path / "whole", "--trainer.max_epochs", "80") == 0
    out = tmp_path / "killed"
    proc = cli_process(*common, "--output_dir", str(out))
    wait_for(out / "last.ckpt", proc)
    time.sleep(0.5)  # inside a later epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert not (out / "metrics.json").exists(), "the signal came too late to test anything"
    if sig == signal.SIGTERM:  # what SLURM, Kubernetes and `kill` send: a safe stop, one line, 128 + 15
        assert proc.returncode == 143 and "Traceback" not in err
        lines = start_up_lines_removed(err)
        assert len(lines) == 1 and lines[0].startswith("Stopped by SIGTERM after epoch "), err
        assert f"{out / 'last.ckpt'} holds epoch " in lines[0] and lines[0].endswith("--ckpt_path last")
    torch.load(out / "last.ckpt", weights_only=True)  # whatever the moment of the kill: a whole file
    assert fit("cnn", data_root, out, "--trainer.max_epochs", "80", "--ckpt_path", "last") == 0
    whole, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert resumed["steps"] == whole["steps"] and resumed["epochs"] == 80
    # no dropout and an epoch-seeded data order: resuming from an epoch boundary changes nothing
    assert (resumed["test_acc"], resumed["test_loss"]) == (whole["test_acc"], whole["test_loss"])


# A fit that SIGKILLs itself inside the checkpoint writer, at the third epoch's last.ckpt, every time:
# either halfway through writing the bytes, or between writing them and renaming them into place.
KILLED_INSIDE_THE_WRITER = """
import os, signal, sys
from mnist_lit import atomic
where = sys.argv.pop(1)
writes = []

class HalfThenDie:
    def __init__(self, f):
        self.f = f
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)
    def write(self, data):
        self.f.write(bytes(data)[: len(data) // 2])
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

def dying_open(file, mode="r", *args, **kwargs):
    f = open(file, mode, *args, **kwargs)
    if "last.ckpt" in str(file) and "w" in mode:
        writes.append(file)
        if len(writes) == 3 and where == "write":
            return HalfThenDie(f)
    return f

real_replace = os.replace
def dying_replace(src, dst, *args, **kwargs):
    if str(dst).endswith("last.ckpt") and len(writes) == 3 and where == "rename":
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

atomic.open = dying_open
os.replace = dying_replace
from mnist_lit.__main__ import main
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["write", "rename"])
def test_a_kill_inside_the_checkpoint_writer_keeps_a_whole_checkpoint(where: str, data_root: Path, tmp_path: Path):
    epochs = ("--trainer.max_epochs", "4")
    assert fit("dense512", data_root, tmp_path / "whole", *epochs) == 0
    out = tmp_path / "killed"
    done = subprocess.run([sys.executable, "-c", KILLED_INSIDE_THE_WRITER, where, "fit", "--config", "dense512",
                           "--data.data_dir", str(data_root), "--output_dir", str(out), *epochs], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    last = torch.load(out / "last.ckpt", weights_only=True)  # the second epoch's, whole
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2
    assert fit("dense512", data_root, out, *epochs, "--ckpt_path", "last") == 0
    whole, resumed = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert (resumed["steps"], resumed["test_acc"], resumed["test_loss"]) == (
        whole["steps"], whole["test_acc"], whole["test_loss"])
    assert not list(out.glob(".*.tmp"))  # the resumed fit removed the killed one's half-written file


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line(data_root: Path, tmp_path: Path):
    out = tmp_path / "o"
    proc = cli_process("fit", "--config", "cnn", "--data.data_dir", str(data_root), "--output_dir", str(out),
                       "--trainer.max_epochs", "200")
    wait_for(out / "last.ckpt", proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = start_up_lines_removed(err)  # then exactly one line about the interruption
    assert len(lines) == 1 and lines[0].startswith("Interrupted in epoch ")
    assert f"{out / 'last.ckpt'} holds epoch " in lines[0] and lines[0].endswith("--ckpt_path last")
    torch.load(out / "last.ckpt", weights_only=True)


class PoisonAfterStep12(Callback):
    """Turns one weight into NaN once 12 optimizer steps are done: step 13, in epoch 3, has a NaN loss."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == 12:
            with torch.no_grad():
                next(pl_module.net.parameters()).view(-1)[0] = float("nan")


def test_nan_loss_stops_at_its_step_and_keeps_the_last_finished_epoch(data_root: Path, tmp_path: Path, capsys):
    # dense512 on 640 samples, one step a batch: 5 steps an epoch
    assert fit("dense512", data_root, tmp_path, "--trainer.max_epochs", "5",
               "--trainer.callbacks+=tests.test_reliability.PoisonAfterStep12") == 1
    err = capsys.readouterr().err
    assert err == ("mnist_lit: error: training loss became nan at step 13 (epoch 3); stopped, and last.ckpt still "
                   "holds the last finished epoch\n")
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2 and last["global_step"] == 10
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_a_loss_that_diverges_at_once_stops_at_its_step(data_root: Path, tmp_path: Path, capsys):
    assert fit("softmax_regression", data_root, tmp_path, "--model.init_args.lr", "1e38") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist_lit: error: training loss became ")
    assert " at step 2 (epoch 1)" in err  # the first step's update is what overflows
    assert not (tmp_path / "last.ckpt").exists() and not (tmp_path / "metrics.json").exists()


def test_same_seed_same_result(data_root: Path, tmp_path: Path):
    for name in ("a", "b"):  # tiny_mlp has dropout: the seed must cover it too
        assert fit("tiny_mlp", data_root, tmp_path / name, "--trainer.max_epochs", "2",
                   "--trainer.deterministic", "true") == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab")
    assert (a["test_acc"], a["test_loss"], a["history"][-1]["train_loss"]) == \
           (b["test_acc"], b["test_loss"], b["history"][-1]["train_loss"])


@pytest.mark.slow
def test_a_second_fit_into_the_same_folder_refuses(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "shared"
    first = cli_process("fit", "--config", "cnn", "--data.data_dir", str(data_root), "--output_dir", str(out),
                        "--trainer.max_epochs", "200")
    try:
        wait_for(out / "last.ckpt", first)
        capsys.readouterr()
        assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "1") == 1
        assert capsys.readouterr().err == (f"mnist_lit: error: {out}: another fit is writing here (process "
                                           f"{first.pid}); wait for it to end, or give this one another --output_dir\n")
        assert first.poll() is None and not (out / "metrics.json").exists()  # the first one goes on, alone
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    torch.load(out / "last.ckpt", weights_only=True)
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "1") == 0  # a killed holder leaves no lock


def file_size_limit(limit: int):
    """As when the disk fills up: writes past `limit` bytes fail (EFBIG) instead of killing the process."""
    import resource

    def apply() -> None:
        default_sigint()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_line_and_the_previous_files_stay(data_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "1") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix in (".ckpt", ".json", ".pt")}
    # a tiny_mlp checkpoint is about 160 KB: resuming for a second epoch cannot write it
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "tiny_mlp", "--data.data_dir",
                           str(data_root), "--output_dir", str(out), "--trainer.max_epochs", "2", "--ckpt_path", "last"],
                          cwd=REPO, capture_output=True, text=True, preexec_fn=file_size_limit(100_000))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert start_up_lines_removed(done.stderr) == [
        f"mnist_lit: error: {out / 'last.ckpt'}: could not be written (File too large); the previous one is unchanged"]
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix in (".ckpt", ".json", ".pt")}
    assert after == before and not list(out.glob(".*.tmp"))
