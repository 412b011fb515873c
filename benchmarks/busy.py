"""mnist_lit and Keras on JAX on a machine that is doing something else too: one table.

    python -m benchmarks.busy --keras-python /tmp/kenv/bin/python [--tutorials dense512 cnn ...]
        [--epochs cnn=1 ...] [--conditions alone busy pair]

Each tutorial runs three ways, mnist_lit (`python -m mnist_lit fit`) and the same recipe in Keras on JAX
(benchmarks/keras_recipes.py, through vs_keras' Keras child) in turn, each in processes of its own:
- alone;
- busy: beside one CPU-bound process (`while True: pass`), started before and killed after;
- pair: two copies of the same command at once (a learner's two notebooks, a shared runner).
Training seconds as vs_keras counts them (mnist_lit: its epochs from metrics.json, the compile of the first
epoch included; Keras: its `model.fit` call); for a pair, the slower copy's. The table gives each cell,
mnist_lit / Keras in the same cell, and each side's busy / alone and pair / alone. By default the cnn runs
one epoch (Keras on JAX takes minutes an epoch here) and every other tutorial its whole recipe. Nothing else
should run meanwhile: the point is the load this script makes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import REPO
from benchmarks.vs_keras import dataset_file, keras_command, keras_env, ours_command, ours_result

CONDITIONS = ("alone", "busy", "pair")
DEFAULT_EPOCHS = {"cnn": 1}


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, its family and vector width: figures hold for one CPU only."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    field = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in info.splitlines()[:30] if ":" in line)}
    get = lambda key: field.get(key, "?")  # noqa: E731
    return (f"{get('model name')}, family {get('cpu family')} model {get('model')}, "
            f"{'AVX-512' if 'avx512f' in info else 'AVX2 only'}, {os.cpu_count()} cores")


def run_copies(commands: list[list[str]], env: dict[str, str]) -> list[str]:
    """Start every command at once; their standard outputs, once all have ended."""
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    outs = []
    for p, c in zip(procs, commands):
        out, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"busy: {' '.join(c[2:6])} failed: {(err.strip().splitlines() or ['?'])[-1]}")
        outs.append(out)
    return outs


def measure(side: str, name: str, condition: str, tmp: Path, keras_python: str, epochs: int) -> float:
    copies = 2 if condition == "pair" else 1
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
    try:
        if hog is not None:
            time.sleep(1.0)  # the busy process is running before the fit starts
        if side == "mnist_lit":
            outs = [tmp / f"{name}-{condition}-{k}" for k in range(copies)]
            flags = ["--trainer.max_epochs", str(epochs)] if epochs else []
            run_copies([ours_command(name, o, *flags) for o in outs], dict(os.environ))
            return max(ours_result(o)["seconds"] for o in outs)
        data = dataset_file(name, tmp)
        printed = run_copies([keras_command(keras_python, name, data, epochs=epochs)] * copies, keras_env("jax"))
        return max(json.loads(p.strip().splitlines()[-1])["seconds"] for p in printed)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorials", nargs="+", default=["softmax_regression", "dense512", "fashion_mlp", "tiny_mlp", "cnn"])
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--epochs", nargs="*", default=[], metavar="NAME=N",
                        help="epochs for a tutorial (default: cnn=1, the others their whole recipe)")
    parser.add_argument("--keras-python", default=sys.executable, help="the Python with Keras and JAX")
    args = parser.parse_args()
    epochs = {**DEFAULT_EPOCHS, **{k: int(v) for k, v in (e.split("=") for e in args.epochs)}}
    probe = subprocess.run([args.keras_python, "-c", "import keras, jax"], capture_output=True, env=keras_env("jax"))
    if probe.returncode:
        raise SystemExit(f"busy: no Keras on JAX for {args.keras_python}: pip install -e '.[keras-bench]' "
                         "(or give --keras-python)")
    print(f"{cpu_name()}; training seconds (a pair: the slower copy); OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} in this shell (`python -m mnist_lit` sets GOMP_SPINCOUNT "
          "when it is unset)", flush=True)
    header = f"{'tutorial':<19} {'epochs':>6} {'condition':<9} {'mnist_lit s':>11} {'Keras-JAX s':>11} {'ours/Keras':>10}"
    print(header + f" {'ours x alone':>12} {'Keras x alone':>13}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tutorials:
            alone: dict[str, float] = {}
            for condition in args.conditions:
                cell = {side: measure(side, name, condition, Path(tmp), args.keras_python, epochs.get(name, 0))
                        for side in ("mnist_lit", "keras")}
                if condition == "alone":
                    alone = cell
                slow = "".join(f" {cell[s] / alone[s]:>{w}.2f}" if alone else f" {'':>{w}}"
                               for s, w in (("mnist_lit", 12), ("keras", 13)))
                print(f"{name:<19} {epochs.get(name) or 'all':>6} {condition:<9} {cell['mnist_lit']:>11.2f} "
                      f"{cell['keras']:>11.2f} {cell['mnist_lit'] / cell['keras']:>10.2f}{slow}", flush=True)


if __name__ == "__main__":
    main()
