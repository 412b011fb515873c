"""Fixtures: small synthetic IDX files in torchvision's layout, so the default test run is hermetic."""

from __future__ import annotations

import atexit
import gzip
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

TRAIN, TEST = 640, 200


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits a small net learns in a few steps: class k lights a bar at row 2 + 2k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx_folder(folder: Path, train: int = TRAIN, test: int = TEST, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_split(n, seed)
        for name, data in ((f"{split}-images-idx3-ubyte", idx_bytes(images, 0x803)),
                           (f"{split}-labels-idx1-ubyte", idx_bytes(labels, 0x801))):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
            else:
                (folder / name).write_bytes(data)
    return folder


# The suite's exact comparisons (resumed == uninterrupted, grouped == single steps) hold for the CPU's
# deterministic kernels: on a machine with a GPU every test still trains on the CPU, in this process and in
# the processes it starts. tests/test_gpu.py (marked gpu) is what runs on the GPU.
if os.environ.get("MNIST_LIT_TEST_ON_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

# the uncompressed copies torchvision reads go to a cache of the suite's own (inherited by the processes
# it starts), not the user's ~/.cache/mnist_lit
os.environ["MNIST_LIT_CACHE"] = CACHE = tempfile.mkdtemp(prefix="mnist_lit-test-cache-")
atexit.register(shutil.rmtree, CACHE, True)


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
