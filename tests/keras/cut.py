"""Cut the fixtures in this folder from Keras' own files (`../shared/keras` beside the repo): run once by hand.

    python tests/keras/cut.py ../shared/keras

Model files are copied as Keras wrote them, except dense512.keras, whose optimizer variables (as large
as the weights) are dropped to keep the fixtures small; cnn.keras and fashion_mlp.keras keep theirs, so
the importer is still tested on files that hold an optimizer. A trace keeps the test images, Keras'
probabilities, the training batch, the three losses and the weights after each of the three steps
(`w0` is the model file itself); dense512's keeps the weights after the first step only.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ["cnn.keras", "cnn.h5", "tiny_mlp.keras", "tiny_mlp.h5", "softmax_regression.keras", "fashion_mlp.keras"]


def strip_optimizer(src: Path, dst: Path) -> None:
    import h5py

    with zipfile.ZipFile(src) as z:
        parts = {name: z.read(name) for name in z.namelist()}
    tmp = dst.with_suffix(".weights.h5")
    tmp.write_bytes(parts["model.weights.h5"])
    with h5py.File(tmp, "a") as h5:
        del h5["optimizer"]
    with h5py.File(tmp, "r") as old, h5py.File(tmp.with_suffix(".packed"), "w") as new:
        for key in old:  # copying leaves the freed space behind
            old.copy(old[key], new)
        for k, v in old.attrs.items():
            new.attrs[k] = v
    parts["model.weights.h5"] = tmp.with_suffix(".packed").read_bytes()
    tmp.unlink()
    tmp.with_suffix(".packed").unlink()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in parts.items():
            z.writestr(name, data)


def main(shared: Path) -> None:
    for name in MODELS:
        shutil.copyfile(shared / name, HERE / name)
    strip_optimizer(shared / "dense512.keras", HERE / "dense512.keras")
    for name in ("cnn", "dense512", "tiny_mlp", "fashion_mlp", "softmax_regression"):
        trace = np.load(shared / f"{name}.trace.npz")
        steps = (1,) if name == "dense512" else (1, 2, 3)
        keep = {k: trace[k] for k in trace.files
                if not k.startswith("w") or int(k[1:].split("_")[0]) in steps}
        np.savez_compressed(HERE / f"{name}.trace.npz", **keep)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
