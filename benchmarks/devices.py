"""What each speed device buys (mnist_lit/speed.py, and the short spin of waiting threads in __main__.py): the same fit with the
device on (mnist_lit's default) and off, one table.

    python -m benchmarks.devices [--only NAME ...]

Each row is two `python -m mnist_lit fit` runs in processes of their own, one after the other, on an
otherwise idle machine; training seconds as vs_keras counts them (the epochs from metrics.json, a compile
in the first epoch included). The last column is off / on: above 1, the device saves time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.busy import cpu_name
from benchmarks.vs_keras import ours

# name: (tutorial, epochs, flags or environment with the device on, the same with it off)
DEVICES = {
    "channels_last (cnn)": ("cnn", 2, {}, {"flags": ["--model.init_args.channels_last", "false"]}),
    "one thread for a small step (softmax_regression)": ("softmax_regression", 0, {}, {"env": {"OMP_NUM_THREADS": "2"}}),
    "short spin, against passive waiting (dense512)": ("dense512", 5, {}, {"env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    "short spin, against passive waiting (cnn)": ("cnn", 2, {}, {"env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    "short spin, against spinning always (dense512)": ("dense512", 5, {}, {"env": {"OMP_WAIT_POLICY": "ACTIVE"}}),
}


def fit(name: str, epochs: int, setting: dict, out: Path) -> list[float]:
    """The epochs' seconds of one fit."""
    flags = ["--trainer.max_epochs", str(epochs)] if epochs else []
    return ours(name, out, *flags, *setting.get("flags", []),
                env={**os.environ, **setting.get("env", {})})["epoch_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=[], help="rows whose name contains one of these words")
    args = parser.parse_args()
    print(f"{cpu_name()}; training seconds", flush=True)
    print(f"{'device':<50} {'on s':>7} {'off s':>7} {'off/on':>7}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for label, (name, epochs, on, off) in DEVICES.items():
            if args.only and not any(word in label for word in args.only):
                continue
            t_on, t_off = (sum(fit(name, epochs, s, Path(tmp) / f"{k}-{len(label)}")) for k, s in (("on", on), ("off", off)))
            print(f"{label:<50} {t_on:>7.2f} {t_off:>7.2f} {t_off / t_on:>7.2f}", flush=True)

if __name__ == "__main__":
    main()
