"""The cnn's training step in torch and in Keras, op by op, where both call the same oneDNN kernels.

    pip install -e '.[keras-bench]'        # tensorflow-cpu, for this script only
    python -m benchmarks.studies.onednn_vs_keras [--keras-python PYTHON] [--steps 160] [--bf16]

Run it from the repository root: both sides' processes import this package from there.

TensorFlow on x86 runs the cnn's convolutions, pooling and dense layers through oneDNN, as torch runs its
convolutions. Each side runs in a process of its own, twice: once quietly, for its milliseconds per step,
and once with ONEDNN_VERBOSE=1, which makes oneDNN print every kernel it executes and how long it took.
The table sums those kernels per step by operation, pass and shape, side by side. Ops oneDNN does not
run (torch's pooling and ReLUs, TensorFlow's Eigen kernels, the optimizers) show only in the step time.

torch: a bare loop (the cnn, Keras' RMSprop, channels-last, one random batch of 128). Keras: `model.fit`
with the tutorial's layers on `--steps` random batches. Each runs three epochs of `--steps` steps; the
first is warm-up and the step time is the faster of the other two. Keras' kernel-timing run uses one
inter-op thread so that no two kernels overlap and inflate each other's times (its step time is printed
for that setting too). Kernel totals are divided over all three epochs' steps. Run it on an otherwise
idle machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys

from benchmarks import REPO


def keras_child(steps: int, bf16: bool, inter_op: int) -> None:
    """Keras' side, in a process of its own under `--keras-python`: `model.fit` of the tutorial's cnn on
    random batches, three epochs of `steps` steps, the first one warm-up."""
    import time

    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks import keras_recipes

    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    keras.utils.set_random_seed(0)
    x = np.random.rand(128 * steps, 28, 28, 1).astype("float32")
    y = np.random.randint(0, 10, 128 * steps)
    model = keras_recipes.model("cnn")
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")  # no metric: the step alone
    starts, ends = [], []
    timer = keras.callbacks.LambdaCallback(on_epoch_begin=lambda *_: starts.append(time.perf_counter()),
                                           on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=128, epochs=3, verbose=0, callbacks=[timer])  # the first epoch is warm-up
    print("STEP_MS", min(e - s for s, e in list(zip(starts, ends))[1:]) / steps * 1e3, file=sys.stderr)


def torch_child(steps: int, bf16: bool) -> None:
    """The bare torch loop, run as a child process of this script."""
    import time

    from mnist_lit import memory

    memory.tune()
    import torch

    from benchmarks.cnn_step import cnn_step

    torch.manual_seed(0)
    step = cnn_step(bf16)
    times = []
    for _ in range(3):  # as Keras: three epochs of `steps` steps, the first one warm-up
        start = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(time.perf_counter() - start)
    print("STEP_MS", min(times[1:]) / steps * 1e3, file=sys.stderr)


def run(command: list[str], verbose: bool) -> tuple[float, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    found = re.search(r"STEP_MS ([0-9.]+)", done.stderr)
    if done.returncode or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"onednn_vs_keras: {command[0]} failed: {last}")
    return float(found.group(1)), done.stdout


def kernels(verbose_out: str, steps: int) -> dict[str, float]:
    """Milliseconds per step for each (operation, pass, shape) oneDNN executed."""
    totals: dict[str, float] = collections.defaultdict(float)
    for line in verbose_out.splitlines():
        fields = line.split(",")
        if len(fields) < 10 or fields[2:4] != ["primitive", "exec"] or fields[5] == "reorder":
            continue
        shape = re.sub(r"_?iw\d.*|kh.*", "", fields[-2])  # mb128_ic32oc64_ih13oh11: batch, channels, sizes
        totals[f"{fields[5]} {fields[7]} {shape}"] += float(fields[-1])
    return {key: ms / steps for key, ms in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keras-python", default=sys.executable,
                        help="a Python with tensorflow-cpu (default: this one)")
    parser.add_argument("--steps", type=int, default=160)
    parser.add_argument("--bf16", action="store_true",
                        help="torch under bf16 autocast, Keras under its mixed_bfloat16 policy")
    parser.add_argument("--child", choices=["torch", "keras"], help=argparse.SUPPRESS)
    parser.add_argument("--inter-op", type=int, default=0, help=argparse.SUPPRESS)  # Keras' child; 0: its default
    args = parser.parse_args()
    if args.child == "torch":
        return torch_child(args.steps, args.bf16)
    if args.child == "keras":
        return keras_child(args.steps, args.bf16, args.inter_op)
    # this module again, in each side's Python, from the repository root (run's cwd)
    child = ["-m", __spec__.name, "--steps", str(args.steps)] + ["--bf16"] * args.bf16
    ours = [sys.executable, *child, "--child", "torch"]
    keras = [args.keras_python, *child, "--child", "keras", "--inter-op"]
    torch_ms, _ = run(ours, verbose=False)
    keras_ms, _ = run(keras + ["0"], verbose=False)
    keras_one_ms, _ = run(keras + ["1"], verbose=False)
    _, torch_out = run(ours, verbose=True)
    _, keras_out = run(keras + ["1"], verbose=True)
    ours_k = kernels(torch_out, 3 * args.steps)
    theirs = kernels(keras_out, 3 * args.steps)
    print(f"cnn, batch 128, {'bf16' if args.bf16 else 'float32'}, {args.steps} steps")
    print(f"step: torch {torch_ms:.2f} ms; Keras {keras_ms:.2f} ms "
          f"({keras_one_ms:.2f} ms with one inter-op thread)")
    print(f"\n{'oneDNN kernel (op, pass, shape)':<62} {'torch ms':>9} {'Keras ms':>9}")
    for key in sorted(set(ours_k) | set(theirs), key=lambda k: -max(ours_k.get(k, 0), theirs.get(k, 0))):
        mine, their = ours_k.get(key), theirs.get(key)
        if max(mine or 0, their or 0) < 0.01:
            continue
        print(f"{key:<62} {'-' if mine is None else f'{mine:.2f}':>9} {'-' if their is None else f'{their:.2f}':>9}")
    print(f"{'all oneDNN kernels':<62} {sum(ours_k.values()):>9.2f} {sum(theirs.values()):>9.2f}")


if __name__ == "__main__":
    main()
