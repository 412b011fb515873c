"""What backs the two rules for small steps: one intra-op thread below ONE_THREAD_MACS (mnist_lit/threads.py),
and whole compiled steps for long fits of dense networks (mnist_lit/compiled_step.py).

    python -m benchmarks.studies.small_steps [--tutorials tiny_mlp fashion_mlp ...] [--steps 1500] [--rounds 2]

For each tutorial, alternated in rounds, the bare loop of benchmarks/vs_keras.py (no Lightning, no metrics,
no validation; its first `--steps` steps of the recipe) eagerly and as compiled whole steps, each at one
and at two intra-op threads (OMP_NUM_THREADS), each in a process of its own. It prints ms per step without
the first step, the first step's seconds (the compile, for compiled steps), and the forward pass's
multiply-adds per training batch that the thread rule reads.
"""

from __future__ import annotations

import argparse
import os

from benchmarks.fits import CONFIGS
from benchmarks.vs_keras import bare_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tutorials", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    from mnist_lit import threads as thread_rule
    from mnist_lit import models

    batch = {"dense512": 128, "cnn": 128, "tiny_mlp": 32, "fashion_mlp": 32, "softmax_regression": 64}
    classes = {"dense512": models.Dense512, "cnn": models.CNN, "tiny_mlp": models.TinyMLP,
               "fashion_mlp": models.FashionMLP, "softmax_regression": models.SoftmaxRegression}
    print(f"torch {torch.__version__}; ms per step (first step's seconds); {args.steps} steps, {args.rounds} rounds")
    print("| tutorial | forward MACs per batch | eager, 1 thread | eager, 2 threads | compiled, 1 thread "
          "| compiled, 2 threads |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.tutorials:
        macs = thread_rule.forward_macs(classes[name]().net, torch.zeros(batch[name], 1, 28, 28))
        cells = {}
        for _ in range(args.rounds):
            for compiled in (False, True):
                for threads in ("1", "2"):
                    r = bare_run(name, compiled, args.steps, env={**os.environ, "OMP_NUM_THREADS": threads})
                    per_step = (r["seconds"] - r["first_step"]) / (r["steps"] - 1) * 1e3
                    cells.setdefault((compiled, threads), []).append(f"{per_step:.3f} ({r['first_step']:.1f} s)")
        row = " | ".join(", ".join(cells[(c, t)]) for c in (False, True) for t in ("1", "2"))
        print(f"| {name} | {macs / 1e6:.1f} M | {row} |", flush=True)


if __name__ == "__main__":
    main()
