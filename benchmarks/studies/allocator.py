"""glibc's allocator tuned (mnist_lit's default) against left as it is: seconds per epoch and peak memory.

Run by hand from the repository root, not in the tests:

    python -m benchmarks.studies.allocator [--configs cnn dense512] [--rounds 2] [-- fit flags]

For each config it alternates, `--rounds` times, `python -m mnist_lit fit --config <name>` as shipped
(mnist_lit/memory.py raises glibc's mmap and trim thresholds) with the same command under
`MNIST_LIT_MALLOC=system` (glibc's defaults), each in a fresh process. It prints the median training
seconds per epoch (from metrics.json; first epoch dropped when there are several), the ratio, the test
accuracy of both (which must be equal: only where freed memory goes changes), and the peak RSS of each
whole command (VmHWM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.fits import CONFIGS, run_fit


def fit_once(config: str, flags: list[str], tuned: bool, out: Path) -> tuple[float, float, float]:
    """(median seconds per epoch, test accuracy, peak RSS MB) of one fit."""
    env = {k: v for k, v in os.environ.items() if k != "MNIST_LIT_MALLOC"}
    if not tuned:
        env["MNIST_LIT_MALLOC"] = "system"
    cmd = [sys.executable, "-m", "mnist_lit", "fit", "--config", config, "--output_dir", str(out), *flags]
    metrics, _, peak = run_fit(cmd, out, env)
    seconds = metrics["epoch_seconds"]
    return statistics.median(seconds[1:] or seconds), metrics["test_acc"], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["cnn", "dense512"], choices=CONFIGS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("fit_flags", nargs="*", help="after --: flags added to every fit")
    args = parser.parse_args()
    rows = ["| config | tuned s/epoch | glibc default s/epoch | ratio | test acc (tuned / default) "
            "| peak RSS MB (tuned / default) |", "| --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
            for r in range(args.rounds):
                for tuned in (True, False):
                    runs[tuned].append(fit_once(config, args.fit_flags, tuned, Path(tmp) / f"{config}{r}{tuned}"))
                    print(config, "tuned" if tuned else "default", runs[tuned][-1], file=sys.stderr, flush=True)
            (t, ta, tm), (d, da, dm) = ([statistics.median(v[i] for v in runs[k]) for i in range(3)] for k in (True, False))
            rows.append(f"| {config} | {t:.2f} | {d:.2f} | {t / d:.2f} | {ta:.4f} / {da:.4f} | {tm:.0f} / {dm:.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
