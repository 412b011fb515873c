"""Plain helpers the test files share (fixtures are in conftest.py): synthetic IDX data, the CLI in this
process (`run`, `fit`) and in one of its own (`cli_process`), and a checkpoint with random weights.

mnist_lit is imported inside the functions, so that importing this module (conftest.py does) sets nothing
up before conftest.py has hidden the GPUs.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent
KERAS = REPO / "tests" / "keras"  # Keras' own model files and traces (tests/keras/cut.py made them)

# ---------------------------------------------------------------- synthetic MNIST in torchvision's layout

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


# ---------------------------------------------------------------- the command line in this process


def run(*args: str) -> int:
    """`python -m mnist_lit ARGS` in this process: its exit status."""
    from mnist_lit.__main__ import main

    try:
        return main(list(args))
    except SystemExit as e:  # jsonargparse exits on bad arguments
        return int(e.code or 0)


def fit(config: str, data_root: Path, out: Path, *extra: str) -> int:
    return run("fit", "--config", config, "--data.data_dir", str(data_root), "--output_dir", str(out), *extra)


# ---------------------------------------------------------------- the command line in a process of its own


def default_sigint() -> None:
    """As in a terminal's foreground job: a shell starts background jobs (`make test &`) with SIGINT
    ignored, which the child would inherit, and Python then installs no Ctrl-C handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(*args: str, own_session: bool = False) -> subprocess.Popen:
    """`python -m mnist_lit ARGS` from the repo; with `own_session`, in a process group of its own, so a
    signal can reach it and every process it starts (os.killpg)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mnist_lit", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint,
                            start_new_session=own_session)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def start_up_lines_removed(err: str) -> list[str]:
    """stderr without Lightning's usual start-up lines (seed, GPU/TPU, and on resume its restoring notices)."""
    usual = ("Seed set", "GPU", "TPU", "LOCAL_RANK", "Restoring states from", "Restored all states from")
    return [line for line in err.splitlines() if line.strip() and not line.startswith(usual)]


# ---------------------------------------------------------------- models


KERAS_PARAMS = {"dense512": 407_050, "cnn": 97_414, "tiny_mlp": 13_002, "fashion_mlp": 101_770,
                "softmax_regression": 7_850}


def make_checkpoint(name: str, path: Path) -> torch.nn.Module:
    """An mnist_lit checkpoint of `name` with random (not zero) weights, as fit writes it; returns its
    network, in eval mode."""
    import torch

    from mnist_lit.models import TUTORIALS

    torch.manual_seed(0)
    model = TUTORIALS[name]()
    for p in model.net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    checkpoint = {"state_dict": model.state_dict(),
                  "hyper_parameters": {**model.hparams, "_class_path": f"mnist_lit.models.{type(model).__name__}"}}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return model.net.eval()
