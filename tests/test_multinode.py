"""Two "nodes" on this machine, each its own process tree, trained as one job: through torchrun, and through
the plain environment variables (MASTER_ADDR, MASTER_PORT, NODE_RANK) a cluster without torchrun sets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_for, write_idx_folder

pytestmark = pytest.mark.slow  # every test starts two or more training processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """`python -m mnist_lit fit --config dense512` on one or more nodes, each a process in a session of its
    own, its output in files (an unread pipe could fill up and stall it)."""

    def __init__(self, launch: str, data: Path, out: Path, *extra: str, nodes: int = 2) -> None:
        self.port = free_port()
        devices = "1" if nodes > 1 else "2"  # two processes either way: the same world size and data split
        args = ["fit", "--config", "dense512", "--data.data_dir", str(data), "--output_dir", str(out),
                "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.deterministic", "true",
                "--trainer.num_nodes", str(nodes), "--trainer.devices", devices, *extra]
        # one thread per process, as torchrun gives a node of several processes: the same arithmetic whether
        # the two processes share a node or not, so the results can be compared to the last digit
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.procs, self.logs = [], []
        for rank in range(nodes):
            if launch == "torchrun":
                argv = [str(Path(sys.executable).with_name("torchrun")), "--nnodes", str(nodes), "--node_rank",
                        str(rank), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                        str(self.port), "-m", "mnist_lit", *args]
                node_env = env
            else:  # what SLURM-less clusters set, and what Lightning reads without torchrun
                argv = [sys.executable, "-m", "mnist_lit", *args]
                node_env = {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.port), "NODE_RANK": str(rank)}
            log = tempfile.TemporaryFile("w+")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(argv, cwd=REPO, env=node_env, stdout=log, stderr=subprocess.STDOUT,
                                               text=True, start_new_session=True))

    def wait(self, timeout: float = 300) -> list[int]:
        try:
            return [proc.wait(timeout=timeout) for proc in self.procs]
        finally:
            self.kill()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def output(self, node: int) -> str:
        self.logs[node].seek(0)
        return self.logs[node].read()


def result(out: Path) -> tuple:
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["world_size"], metrics["steps"], metrics["test_acc"], metrics["test_loss"]


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory) -> tuple:
    """The same job as two processes of one node: what the two nodes must reproduce."""
    root = tmp_path_factory.mktemp("one_machine")
    job = Job("environment", write_idx_folder(root / "data" / "MNIST" / "raw").parent.parent, root / "out",
              "--trainer.max_epochs", "1", nodes=1)
    assert job.wait() == [0], job.output(0)[-3000:]
    return result(root / "out")


@pytest.mark.parametrize("launch", ["torchrun", "environment"])
def test_two_nodes_train_as_two_processes_on_one_machine(launch: str, one_machine, data_root: Path, tmp_path: Path):
    out = tmp_path / "shared"  # both nodes write into one folder, as on a cluster's shared file system
    job = Job(launch, data_root, out, "--trainer.max_epochs", "1")
    assert job.wait() == [0, 0], job.output(0)[-3000:] + job.output(1)[-3000:]
    assert result(out) == one_machine  # world size, steps, test accuracy and loss, to the last digit
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".ckpt", ".json")) == [
        "last.ckpt", "metrics.json", "model.ckpt"], "one set of outputs, written by global rank 0 alone"
    assert job.output(0).count("Test: loss: ") == 1 and "Test: loss: " not in job.output(1)


def test_sigterm_to_one_node_stops_both_and_the_job_resumes_to_the_uninterrupted_result(data_root: Path,
                                                                                        tmp_path: Path):
    epochs = ("--trainer.max_epochs", "300")
    out = tmp_path / "stopped"
    job = Job("environment", data_root, out, *epochs)
    try:
        wait_for(out / "last.ckpt", job.procs[0])
        time.sleep(0.5)  # inside a later epoch
        job.procs[1].send_signal(signal.SIGTERM)  # node 1 alone, as a scheduler preempting one machine
        codes = job.wait(timeout=120)
    finally:
        job.kill()
    assert codes == [143, 143], job.output(0)[-3000:] + job.output(1)[-3000:]
    assert not (out / "metrics.json").exists(), "the signal came too late to test anything"
    stops = [line for line in job.output(0).splitlines() if "SIGTERM" in line]
    assert len(stops) == 1 and stops[0].startswith("Stopped by SIGTERM after epoch ") and "--ckpt_path last" in stops[0]
    assert "Traceback" not in job.output(0) + job.output(1)
    for folder, *resume in (("stopped", "--ckpt_path", "last"), ("whole",)):  # one job after the other
        again = Job("environment", data_root, tmp_path / folder, *epochs, *resume)
        assert again.wait() == [0, 0], again.output(0)[-3000:] + again.output(1)[-3000:]
    assert result(out) == result(tmp_path / "whole")
