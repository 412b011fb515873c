"""Training in two CPU processes (DDP): each epoch split between them, and SIGTERM to every rank or to one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import cli_process, wait_for

pytestmark = pytest.mark.slow  # every test starts two or more training processes


def test_two_processes_split_each_epoch(data_root: Path, tmp_path: Path):
    proc = cli_process("fit", "--config", "tiny_mlp", "--data.data_dir", str(data_root), "--output_dir",
                       str(tmp_path), "--trainer.max_epochs", "3", "--trainer.strategy", "ddp",
                       "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 3 * 10  # 640 samples, batch 32: 20 steps an epoch alone, 10 on each of 2 ranks
    assert metrics["test_samples"] == 200  # the test set split over the ranks, counted once
    assert metrics["test_acc"] > 0.5


def ddp_fit(data_root: Path, out: Path, *extra: str) -> subprocess.Popen:
    """dense512 (no dropout: a resumed run can match exactly) in two CPU processes, in a session of its own."""
    return cli_process("fit", "--config", "dense512", "--data.data_dir", str(data_root), "--output_dir", str(out),
                       "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu", *extra,
                       own_session=True)


def second_rank(proc: subprocess.Popen) -> int:
    """The process Lightning started for rank 1 (rank 0 is `proc` itself)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            try:  # the relaunched command itself, not a short-lived helper process rank 0 may start first
                if "mnist_lit" in Path(f"/proc/{child}/cmdline").read_text():
                    return int(child)
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("rank 1 never started")


@pytest.mark.parametrize("who", ["every rank", "rank 1 alone"])
def test_sigterm_under_ddp_stops_every_rank_in_one_line_and_resumes(who: str, data_root: Path, tmp_path: Path):
    epochs = ("--trainer.max_epochs", "300")
    out = tmp_path / "stopped"
    proc = ddp_fit(data_root, out, *epochs)
    rank1 = second_rank(proc)
    try:
        wait_for(out / "last.ckpt", proc)
        time.sleep(0.5)  # inside a later epoch
        if who == "every rank":  # as SLURM and Kubernetes do
            os.killpg(proc.pid, signal.SIGTERM)
        else:  # the ranks agree: one rank's SIGTERM stops both, at the same step
            os.kill(rank1, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # before the fix: a 30-minute hang in a collective, then a traceback
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert not Path(f"/proc/{rank1}").exists() or "zombie" in Path(f"/proc/{rank1}/status").read_text()
    assert not (out / "metrics.json").exists(), "the signal came too late to test anything"
    stops = [line for line in err.splitlines() if "SIGTERM" in line]
    assert len(stops) == 1 and stops[0].startswith("Stopped by SIGTERM after epoch "), err[-3000:]
    assert stops[0].endswith("--trainer.accelerator cpu --trainer.max_epochs 300 --ckpt_path last")
    if who != "every rank":
        return
    for folder, *resume in (("stopped", "--ckpt_path", "last"), ("whole",)):  # one after the other: two DDP
        job = ddp_fit(data_root, tmp_path / folder, *epochs, *resume)  # jobs at once can collide on their port
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", out))
    assert (a["steps"], a["test_acc"], a["test_loss"]) == (b["steps"], b["test_acc"], b["test_loss"])
