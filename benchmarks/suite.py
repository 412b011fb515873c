"""Train all five tutorials with their published recipes, one after the other, as a user would.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.suite [--configs cnn dense512] [-- extra fit flags]

Each tutorial runs as `python -m mnist_lit fit --config <name>` in its own process (outputs in a
temporary folder unless --keep DIR). It prints, per tutorial: test accuracy, epochs, the wall time of
the whole command (start-up, training, test, checkpoints, figures, TorchScript export) and the training
time alone (the sum of metrics.json's epoch_seconds); then the suite's totals. This is the figure to set
beside the Keras tutorials run on the same machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.fits import CONFIGS, run_fit


def run(config: str, out: Path, flags: list[str]) -> tuple[dict, float, float]:
    return run_fit([sys.executable, "-m", "mnist_lit", "fit", "--config", config, "--output_dir", str(out), *flags],
                   out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--keep", type=Path, help="write each tutorial's outputs to KEEP/<name> and keep them")
    parser.add_argument("fit_flags", nargs="*", help="after --: flags added to every fit")
    args = parser.parse_args()
    rows = [f"torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f", flags: {' '.join(args.fit_flags)}" if args.fit_flags else ""),
            "| tutorial | test acc | epochs | command wall s | training s | peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- |"]
    total_wall = total_train = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for config in args.configs:
            metrics, wall, peak = run(config, root / config, args.fit_flags)
            train = sum(metrics["epoch_seconds"])
            total_wall, total_train = total_wall + wall, total_train + train
            rows.append(f"| {config} | {metrics['test_acc']:.4f} | {metrics['epochs']} | {wall:.1f} | {train:.1f} | {peak:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)  # progress; the table follows on stdout
    rows.append(f"| all | | | {total_wall:.1f} | {total_train:.1f} | |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
