"""Whether the engine's swap earns its place: the cnn with each MaxPool before its ReLU (as the engine runs
it, `mnist_lit.engine.pool_before_relu`) against the order its file lists, Keras' (ReLU, then pool).

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.pool_order [--rounds 5] [--steps 60] [--fit-epochs 2]

- Bare training steps (`benchmarks/cnn_step.py`: float32, channels-last, Keras' RMSprop), the two orders
  alternated in each round: median milliseconds a step, and the ratio pool-first / Keras order.
- With `--fit-epochs N`: whole `fit --config cnn` runs of N epochs, the two alternated, the swap turned
  off for the Keras-order run by replacing `pool_before_relu` with the identity in this process: training
  seconds (metrics.json's epoch_seconds) and test accuracy, which must be the same in both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from mnist_lit import memory

memory.tune()  # as python -m mnist_lit does

import torch  # noqa: E402

from benchmarks import REPO  # noqa: E402
from benchmarks.cnn_step import cnn_step  # noqa: E402

ORDERS = ("keras order", "pool first")


def step_ms(keras_order: bool, steps: int) -> float:
    torch.manual_seed(0)
    step = cnn_step(keras_order=keras_order)
    for _ in range(10):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def fit(keras_order: bool, epochs: int, out: Path) -> tuple[float, float]:
    from mnist_lit import engine
    from mnist_lit.callbacks import quiet_lightning
    from mnist_lit.cli import MnistCLI, resolve_config

    swap = engine.pool_before_relu
    if keras_order:
        engine.pool_before_relu = lambda net: net
    try:
        quiet_lightning()
        MnistCLI(args=["fit", "--config", resolve_config("cnn"), "--trainer.max_epochs", str(epochs),
                       "--data.data_dir", str(REPO / "data"), "--output_dir", str(out)])
    finally:
        engine.pool_before_relu = swap
    metrics = json.loads((out / "metrics.json").read_text())
    return sum(metrics["epoch_seconds"]), metrics["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per order and round")
    parser.add_argument("--fit-epochs", type=int, default=0, help="also time whole fits of this many epochs")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bare cnn steps, float32, batch 128")
    print("| round | keras order ms/step | pool first ms/step | ratio |")
    print("| --- | --- | --- | --- |")
    ratios = []
    for r in range(1, args.rounds + 1):
        keras, pooled = step_ms(True, args.steps), step_ms(False, args.steps)
        ratios.append(pooled / keras)
        print(f"| {r} | {keras:.2f} | {pooled:.2f} | {ratios[-1]:.2f} |", flush=True)
    print(f"median ratio (pool first / keras order): {statistics.median(ratios):.2f}")
    if args.fit_epochs:
        print(f"\nwhole fits of {args.fit_epochs} epochs, alternated")
        print("| order | training seconds | test acc |")
        print("| --- | --- | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            for order in ORDERS:
                seconds, acc = fit(order == "keras order", args.fit_epochs, Path(tmp) / order.replace(" ", "_"))
                print(f"| {order} | {seconds:.2f} | {acc:.4f} |", flush=True)


if __name__ == "__main__":
    main()
