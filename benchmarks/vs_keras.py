"""Keras against mnist_lit, side by side: each tutorial's Keras recipe, then `python -m mnist_lit fit`.

    pip install -e '.[keras-bench]'        # tensorflow-cpu: for this script only, never a dependency
    python -m benchmarks.vs_keras [--tutorials cnn dense512 ...] [--rounds 2] [--keras-python PYTHON] [--bf16]

Run it from the repository root: the Keras process imports benchmarks/keras_recipes.py from there.

Per round and tutorial, Keras first, then mnist_lit, each in a process of its own on the same data (the
MNIST / Fashion-MNIST files mnist_lit finds). Training seconds: Keras' `model.fit` call; mnist_lit's
per-epoch seconds from metrics.json (the same span: the epochs, without start-up, data loading and the
test). Test accuracy: Keras' `evaluate` and mnist_lit's test_acc. The Keras models are written from the
tutorials' published recipes, in benchmarks/keras_recipes.py.

With --bf16, each tutorial runs twice more: Keras under its `mixed_bfloat16` policy and mnist_lit with
`--trainer.precision bf16-mixed`. Run it on an otherwise idle machine: torch's and TensorFlow's thread
pools both slow down badly beside other work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REPO


def keras_child(name: str, data_file: str, policy: str) -> None:
    """Keras' side, in a process of its own under `--keras-python`: the tutorial's recipe on the data
    file, then one JSON line with the seconds of `model.fit` and the test accuracy."""
    import time

    import keras

    from benchmarks import keras_recipes

    keras.mixed_precision.set_global_policy(policy)  # "float32", or "mixed_bfloat16" for --bf16
    d = np.load(data_file)
    x, y, xt, yt = d["x"] / 255.0, d["y"], d["xt"] / 255.0, d["yt"]
    keras.utils.set_random_seed(0)
    if name == "cnn":
        x, xt = x[..., None], xt[..., None]
    model = keras_recipes.model(name)
    recipe = keras_recipes.recipe(name, (xt, yt))
    model.compile(optimizer=recipe.pop("optimizer"), loss=keras_recipes.loss(name), metrics=["accuracy"])
    if name == "softmax_regression":  # 2000 steps of batch 64, as the TF1 tutorial
        import tensorflow as tf
        data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(60000, seed=0).repeat().batch(64)
        fit = lambda: model.fit(data, epochs=1, steps_per_epoch=2000, verbose=0)  # noqa: E731
    else:
        fit = lambda: model.fit(x, y, verbose=0, **recipe)  # noqa: E731
    start = time.perf_counter()
    fit()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "test_acc": float(model.evaluate(xt, yt, verbose=0)[1])}))


def dataset_file(name: str, folder: Path) -> Path:
    """The tutorial's data set as mnist_lit finds it, in a .npz for the Keras process (which imports no torch)."""
    from mnist_lit.data import load_split, locate

    dataset = "fashion_mnist" if name == "fashion_mlp" else "mnist"
    where = locate(dataset, REPO / "data", allow_download=False)
    (x, y), (xt, yt) = (load_split(where, split, dataset) for split in ("train", "test"))
    path = folder / f"{dataset}.npz"
    if not path.exists():
        np.savez(path, x=x[:, 0].numpy(), y=y.numpy(), xt=xt[:, 0].numpy(), yt=yt.numpy())
    return path


def keras_run(python: str, name: str, data: Path, policy: str = "float32") -> dict:
    # this module again under the Keras Python, from the repository root so that it finds this package
    done = subprocess.run([python, "-m", __spec__.name, "--keras-child", name, str(data), policy], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode:
        raise SystemExit(f"vs_keras: Keras' {name} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours(name: str, out: Path, *flags: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", name, "--output_dir", str(out),
                           *flags], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vs_keras: mnist_lit's {name} failed: {done.stderr.strip().splitlines()[-1]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": sum(metrics["epoch_seconds"]), "test_acc": metrics["test_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorials", nargs="+",
                        default=["softmax_regression", "dense512", "fashion_mlp", "tiny_mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keras-python", default=sys.executable,
                        help="the Python that runs Keras (default: this one), e.g. another venv's with tensorflow-cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="also Keras' mixed_bfloat16 policy and mnist_lit's --trainer.precision bf16-mixed; "
                             "every ratio is to Keras' float32 time of the same round")
    parser.add_argument("--keras-child", nargs=3, metavar=("NAME", "DATA", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_child:
        return keras_child(*args.keras_child)
    probe = subprocess.run([args.keras_python, "-c", "import keras, tensorflow"], capture_output=True)
    if probe.returncode:
        raise SystemExit(f"vs_keras: no TensorFlow for {args.keras_python}: pip install -e '.[keras-bench]' "
                         "(or give --keras-python)")
    print(f"{'round':<6} {'tutorial':<19} {'Keras s':>8} {'ours s':>8} {'ratio':>6} {'Keras acc':>10} {'our acc':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name in args.tutorials:
                data = dataset_file(name, Path(tmp))
                k = keras_run(args.keras_python, name, data)
                o = ours(name, Path(tmp) / f"{name}_{round_}")
                print(f"{round_:<6} {name:<19} {k['seconds']:>8.2f} {o['seconds']:>8.2f} {o['seconds'] / k['seconds']:>6.2f}"
                      f" {k['test_acc']:>10.4f} {o['test_acc']:>8.4f}", flush=True)
                if args.bf16:
                    kb = keras_run(args.keras_python, name, data, "mixed_bfloat16")
                    ob = ours(name, Path(tmp) / f"{name}_{round_}_bf16", "--trainer.precision", "bf16-mixed")
                    label = f"{name} bf16"
                    print(f"{round_:<6} {label:<19} {kb['seconds']:>8.2f} {ob['seconds']:>8.2f} "
                          f"{ob['seconds'] / k['seconds']:>6.2f} {kb['test_acc']:>10.4f} {ob['test_acc']:>8.4f}"
                          f"   (Keras bf16 / Keras float32: {kb['seconds'] / k['seconds']:.2f})", flush=True)


if __name__ == "__main__":
    main()
