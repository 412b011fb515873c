"""Train all five tutorials with their published recipes, one after the other, as a user would.

Run by hand, not in the tests:  python benchmarks/suite.py [--configs cnn dense512] [-- extra fit flags]

Each tutorial runs as `python -m mnist_lit fit --config <name>` in its own process (outputs in a
temporary folder unless --keep DIR). It prints, per tutorial: test accuracy, epochs, the wall time of
the whole command (start-up, training, test, checkpoints, figures, TorchScript export) and the training
time alone (the sum of metrics.json's epoch_seconds); then the suite's totals. This is the figure to set
beside the Keras tutorials run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["dense512", "cnn", "tiny_mlp", "fashion_mlp", "softmax_regression"]


def run(config: str, out: Path, flags: list[str]) -> tuple[dict, float, float]:
    return run_fit([sys.executable, "-m", "mnist_lit", "fit", "--config", config, "--output_dir", str(out), *flags],
                   out)


def vm_hwm_mb(pid: int) -> float:
    """A process's peak RSS so far, from its own VmHWM (not ru_maxrss: on Linux a child's maxrss starts
    from the forking parent's high-water mark, so it would count this benchmark's own memory)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie has no memory lines


def run_fit(cmd: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[dict, float, float]:
    """Run a command that fits into `out`: its metrics.json, wall seconds and peak RSS in MB (polled every
    50 ms), or exit with its error line."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            try:
                peak = max(peak, vm_hwm_mb(proc.pid))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.05)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:  # the CLI's error line (a bad flag's comes before its details), else the last
        lines = stderr.strip().splitlines()
        reason = next((line for line in lines if "error:" in line), lines[-1] if lines else "no message")
        raise SystemExit(f"{' '.join(cmd)} failed: {reason.strip()}")
    return json.loads((out / "metrics.json").read_text()), wall, peak


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
