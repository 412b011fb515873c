"""Fixtures and suite-wide setup: an empty working folder and the CPU only (functions: helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import write_idx_folder

# The suite's exact comparisons (resumed == uninterrupted, grouped == single steps) hold for the CPU's
# deterministic kernels: on a machine with a GPU every test still trains on the CPU, in this process and in
# the processes it starts. tests/test_gpu.py (marked gpu) is what runs on the GPU.
if os.environ.get("MNIST_LIT_TEST_ON_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


@pytest.fixture(autouse=True, scope="session")
def elsewhere(tmp_path_factory):
    """Every test runs from an empty folder, not the repo: nothing may depend on the working directory,
    and a run that falls back to a default output folder writes there, not into the repo's checkpoints/."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data folder holding synthetic MNIST and Fashion-MNIST."""
    root = tmp_path / "data"
    write_idx_folder(root / "MNIST" / "raw")
    write_idx_folder(root / "FashionMNIST" / "raw")
    return root


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch):
    """Make torchvision's download fail at once, as it does on a machine without internet."""
    from urllib.error import URLError

    from torchvision import datasets

    def offline(self, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    for cls in (datasets.MNIST, datasets.FashionMNIST):
        monkeypatch.setattr(cls, "download", offline)
