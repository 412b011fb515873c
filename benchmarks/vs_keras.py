"""Keras against mnist_lit, side by side: each tutorial's Keras recipe, then `python -m mnist_lit fit`.

    pip install -e '.[keras-bench]'        # Keras, tensorflow-cpu and jax: for this script only
    python -m benchmarks.vs_keras [--tutorials cnn dense512 ...] [--rounds 2] [--keras-python PYTHON]
        [--backend tensorflow jax torch] [--bare] [--bf16]

Run it from the repository root: the Keras process imports benchmarks/keras_recipes.py from there.

Per round and tutorial, Keras on each `--backend` in turn (`KERAS_BACKEND`), then mnist_lit, each in a
process of its own on the same data (the MNIST / Fashion-MNIST files mnist_lit finds). Training seconds:
Keras' `model.fit` call, compiling included (JAX and TensorFlow compile their steps in the first epoch);
mnist_lit's per-epoch seconds from metrics.json (the same span: the epochs, compiling included, without
start-up, data loading and the test). Test accuracy: Keras' `evaluate` and mnist_lit's test_acc. The Keras
models are written from the tutorials' published recipes, in benchmarks/keras_recipes.py.

With --bare, a floor beside them, in a process of its own over the same data tensors, network, optimizer
and batch size, with no Lightning, no metrics and no validation: a bare eager loop (forward, loss,
backward, `optimizer.step()`), on torch's threads or OMP_NUM_THREADS.

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


BACKENDS = ("tensorflow", "jax", "torch")


def keras_child(name: str, data_file: str, policy: str, epochs: str = "0") -> None:
    """Keras' side, in a process of its own under `--keras-python`: the tutorial's recipe on the data
    file (`epochs` > 0: that many epochs instead), then one JSON line with the seconds of `model.fit` and
    the test accuracy."""
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
    if int(epochs) > 0 and name != "softmax_regression":
        recipe["epochs"] = int(epochs)
    model.compile(optimizer=recipe.pop("optimizer"), loss=keras_recipes.loss(name), metrics=["accuracy"])
    if name == "softmax_regression":  # 2000 steps of batch 64, as the TF1 tutorial
        try:  # tf.data where TensorFlow is installed, on any backend: Keras' numpy path was 2-3x slower here
            import tensorflow as tf
        except ImportError:
            order = np.concatenate([np.random.default_rng(e).permutation(len(y)) for e in range(3)])[:2000 * 64]
            fit = lambda: model.fit(x[order], y[order], shuffle=False, verbose=0, **recipe)  # noqa: E731
        else:
            data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(60000, seed=0).repeat().batch(64)
            fit = lambda: model.fit(data, epochs=1, steps_per_epoch=2000, verbose=0)  # noqa: E731
    else:
        fit = lambda: model.fit(x, y, verbose=0, **recipe)  # noqa: E731
    start = time.perf_counter()
    fit()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "test_acc": float(model.evaluate(xt, yt, verbose=0)[1])}))


def dataset_file(name: str, folder: Path) -> Path:
    """The tutorial's data set as mnist_lit reads it, in a .npz for the Keras process (which imports no torch)."""
    from mnist_lit.data import load_split

    dataset = "fashion_mnist" if name == "fashion_mlp" else "mnist"
    (x, y), (xt, yt) = (load_split(REPO / "data", split, dataset) for split in ("train", "test"))
    path = folder / f"{dataset}.npz"
    if not path.exists():
        np.savez(path, x=x[:, 0].numpy(), y=y.numpy(), xt=xt[:, 0].numpy(), yt=yt.numpy())
    return path


def keras_env(backend: str) -> dict[str, str]:
    return {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}


def keras_command(python: str, name: str, data: Path, policy: str = "float32", epochs: int = 0) -> list[str]:
    # this module again under the Keras Python, run from the repository root so that it finds this package
    return [python, "-m", "benchmarks.vs_keras", "--keras-child", name, str(data), policy, str(epochs)]


def keras_run(python: str, name: str, data: Path, policy: str = "float32", backend: str = "tensorflow") -> dict:
    done = subprocess.run(keras_command(python, name, data, policy), cwd=REPO,
                          capture_output=True, text=True, env=keras_env(backend))
    if done.returncode:
        raise SystemExit(f"vs_keras: Keras' {name} on {backend} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bare_child(name: str, limit: str = "0") -> None:
    """A floor, in a process of its own: the tutorial's recipe as a loop with no Lightning (module docstring),
    or its first `limit` steps; prints the seconds of the steps and of the first one (the compile)."""
    import time

    import torch

    from mnist_lit.cli import resolve_config
    from mnist_lit.data import MNISTDataModule
    import yaml

    config = yaml.safe_load(Path(resolve_config(name)).read_text())
    module_path, _, cls = config["model"].rpartition(".")
    model = getattr(__import__(module_path, fromlist=[cls]), cls)()
    dm = MNISTDataModule(**{k: v for k, v in config.get("data", {}).items() if k != "val"})
    dm.prepare_data()
    dm.setup("fit")
    x_all, y_all = dm._splits["train"]
    bs = dm.hparams.batch_size
    steps = config["trainer"].get("max_steps", -1)
    epochs = config["trainer"].get("max_epochs", 1)
    steps = steps if steps > 0 else epochs * (len(y_all) // bs)
    steps = min(steps, int(limit)) if int(limit) > 0 else steps
    net, opt = model.net, model.configure_optimizers()
    torch.set_flush_denormal(True)  # as a fit on the CPU runs (SpeedDevices): Intel CPUs slow down on denormals
    torch.manual_seed(0)
    start = time.perf_counter()
    first = 0.0
    done, epoch = 0, 0
    while done < steps:
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(order) - bs + 1, bs):
            if done == steps:
                break
            idx = order[i:i + bs]
            x, y = x_all[idx].float().div_(255), y_all[idx]
            loss = torch.nn.functional.cross_entropy(net(x), y, reduction=model.hparams.loss_reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done == 1:
                float(loss.detach())
                first = time.perf_counter() - start
        epoch += 1
    float(loss.detach())
    print(json.dumps({"seconds": time.perf_counter() - start, "first_step": first, "steps": steps,
                      "threads": torch.get_num_threads()}))


def bare_run(name: str, limit: int = 0, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.vs_keras", "--bare-child", name, str(limit)],
                          cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"vs_keras: the bare loop of {name} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ours_command(name: str, out: Path, *flags: str) -> list[str]:
    """mnist_lit's fit of a tutorial, as a user types it, writing to `out`."""
    return [sys.executable, "-m", "mnist_lit", "fit", "--config", name, "--output_dir", str(out), *flags]


def ours_result(out: Path) -> dict:
    """What a fit wrote to `out`: its training seconds (the epochs', a compile included), each epoch's, and
    its test accuracy."""
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seconds": sum(metrics["epoch_seconds"]), "epoch_seconds": metrics["epoch_seconds"],
            "test_acc": metrics["test_acc"]}


def ours(name: str, out: Path, *flags: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(ours_command(name, out, *flags), cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"vs_keras: mnist_lit's {name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return ours_result(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorials", nargs="+",
                        default=["softmax_regression", "dense512", "fashion_mlp", "tiny_mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=["tensorflow"],
                        help="Keras backends to run, each set through KERAS_BACKEND (default: tensorflow)")
    parser.add_argument("--keras-python", default=sys.executable,
                        help="the Python that runs Keras (default: this one), e.g. another venv's with tensorflow-cpu")
    parser.add_argument("--bare", action="store_true", help="also a bare eager PyTorch loop")
    parser.add_argument("--bf16", action="store_true",
                        help="also Keras' mixed_bfloat16 policy and mnist_lit's --trainer.precision bf16-mixed; "
                             "every ratio is to Keras' float32 time of the same round (first backend only)")
    parser.add_argument("--keras-child", nargs="+", metavar="NAME DATA POLICY [EPOCHS]", help=argparse.SUPPRESS)
    parser.add_argument("--bare-child", nargs=2, metavar=("NAME", "LIMIT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras_child:
        return keras_child(*args.keras_child)
    if args.bare_child:
        return bare_child(*args.bare_child)
    for backend in args.backend:
        probe = subprocess.run([args.keras_python, "-c", f"import keras, {backend}"], capture_output=True,
                               env=keras_env(backend))
        if probe.returncode:
            raise SystemExit(f"vs_keras: no Keras on {backend} for {args.keras_python}: pip install -e "
                             "'.[keras-bench]' (or give --keras-python)")
    keras_cols = "".join(f" {'Keras/' + b[:5] + ' s':>13}" for b in args.backend)
    floor_cols = f" {'bare s':>7}" if args.bare else ""
    print(f"{'round':<6} {'tutorial':<19}{keras_cols} {'ours s':>8}{floor_cols} {'ours/fastest':>12}"
          f" {'Keras acc':>{10 * len(args.backend)}} {'our acc':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name in args.tutorials:
                data = dataset_file(name, Path(tmp))
                ks = [keras_run(args.keras_python, name, data, backend=b) for b in args.backend]
                o = ours(name, Path(tmp) / f"{name}_{round_}")
                floors = f" {bare_run(name)['seconds']:>7.2f}" if args.bare else ""
                fastest = min(k["seconds"] for k in ks)
                print(f"{round_:<6} {name:<19}" + "".join(f" {k['seconds']:>13.2f}" for k in ks)
                      + f" {o['seconds']:>8.2f}{floors} {o['seconds'] / fastest:>12.2f} "
                      + "".join(f"{k['test_acc']:>10.4f}" for k in ks) + f" {o['test_acc']:>8.4f}", flush=True)
                if args.bf16:
                    k = ks[0]
                    kb = keras_run(args.keras_python, name, data, "mixed_bfloat16", args.backend[0])
                    ob = ours(name, Path(tmp) / f"{name}_{round_}_bf16", "--trainer.precision", "bf16-mixed")
                    label = f"{name} bf16"
                    print(f"{round_:<6} {label:<19} {kb['seconds']:>8.2f} {ob['seconds']:>8.2f} "
                          f"{ob['seconds'] / k['seconds']:>6.2f} {kb['test_acc']:>10.4f} {ob['test_acc']:>8.4f}"
                          f"   (Keras bf16 / Keras float32: {kb['seconds'] / k['seconds']:.2f})", flush=True)


if __name__ == "__main__":
    main()
