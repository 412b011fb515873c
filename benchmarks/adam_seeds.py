"""fashion_mlp's test accuracy over several seeds, with Keras' Adam (what mnist_lit uses) and torch's own.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.adam_seeds [--seeds 0 1 2 3] [--config fashion_mlp]

Each run is `python -m mnist_lit fit --config <config> --seed_everything N --data.seed N` in its own
process; for "torch" the process first swaps mnist_lit's KerasAdam for `torch.optim.Adam`, so nothing
else differs. Prints each seed's test accuracy for both, then the mean, standard deviation and minimum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.fits import run_fit

VARIANTS = ("keras", "torch")


def one_run(variant: str, config: str, seed: int, out: str) -> int:
    """The child process: one fit, with torch's Adam patched in for the "torch" variant."""
    import torch

    import mnist_lit.models.base as base
    from mnist_lit.__main__ import main

    if variant == "torch":
        base.KerasAdam = torch.optim.Adam
    sys.argv = sys.argv[:1]  # this script's own flags are not the CLI's
    return main(["fit", "--config", config, "--seed_everything", str(seed), "--data.seed", str(seed),
                 "--output_dir", out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--config", default="fashion_mlp", help="any config whose optimizer is adam")
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "SEED", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        raise SystemExit(one_run(args.one[0], args.config, int(args.one[1]), args.one[2]))
    acc: dict[str, list[float]] = {v: [] for v in VARIANTS}
    print(f"| seed | {' | '.join(f'{v} Adam' for v in VARIANTS)} |\n| --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for variant in VARIANTS:
                out = Path(tmp) / f"{variant}_{seed}"
                cmd = [sys.executable, "-m", __spec__.name,  # this module again, as `python -m` ran it
                       "--config", args.config, "--one", variant, str(seed), str(out)]
                acc[variant].append(run_fit(cmd, out)[0]["test_acc"])
            print(f"| {seed} | {' | '.join(f'{acc[v][-1]:.4f}' for v in VARIANTS)} |", flush=True)
    for v in VARIANTS:
        spread = statistics.stdev(acc[v]) if len(acc[v]) > 1 else 0.0
        print(f"{v} Adam: mean {statistics.mean(acc[v]):.4f}, sd {spread:.4f}, min {min(acc[v]):.4f}")


if __name__ == "__main__":
    main()
