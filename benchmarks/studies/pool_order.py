"""What running each MaxPool before its ReLU would buy: the cnn in that order (`benchmarks.cnn_step.
pool_before_relu`) against the order its file lists and fit runs, Keras' (ReLU, then pool).

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.pool_order [--rounds 5] [--steps 60]

Bare training steps (`benchmarks/cnn_step.py`: float32, channels-last, Keras' RMSprop), the two orders
alternated in each round: median milliseconds a step, and the ratio pool-first / Keras order.
"""

from __future__ import annotations

import argparse
import statistics
import time

from mnist_lit import memory

memory.tune()  # as python -m mnist_lit does

import torch  # noqa: E402

from benchmarks.cnn_step import cnn_step  # noqa: E402

def step_ms(keras_order: bool, steps: int) -> float:
    torch.manual_seed(0)
    step = cnn_step(pooled_first=not keras_order)
    for _ in range(10):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per order and round")
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


if __name__ == "__main__":
    main()
