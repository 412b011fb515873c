"""On a CUDA GPU: the path the CPU suite cannot take (data on the device, bf16-mixed, serving on cuda).

The rest of the suite hides GPUs (tests/conftest.py) so its exact comparisons hold; these tests start their
runs with the GPU visible, and skip, saying so, where there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = [pytest.mark.gpu, pytest.mark.slow]  # where there is a GPU, each trains in a process of its own


def with_gpu() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                           env=env, capture_output=True, text=True)
    if probe.returncode or probe.stdout.strip() in ("", "0"):
        pytest.skip("no CUDA GPU on this machine")
    return env


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cnn_trains_on_the_gpu(precision: str, tmp_path: Path):
    env = with_gpu()
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "cnn", "--output_dir", str(tmp_path),
                           "--trainer.max_epochs", "2", "--trainer.accelerator", "gpu", "--trainer.devices", "1",
                           "--trainer.precision", precision], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda") and metrics["test_samples"] == 10_000
    assert metrics["test_acc"] >= 0.96
