"""What each speed device of the training step buys: the same fit with the device on (mnist_lit's default)
and off, one table.

    python -m benchmarks.devices [--only NAME ...] [--repeat 1]

Each row is two `python -m mnist_lit fit` runs in processes of their own, one after the other, on an
otherwise idle machine; training seconds as vs_keras counts them (the epochs from metrics.json, a compile
in the first epoch included). The last column is off / on: above 1, the device saves time. The "cold
compile" row runs the compiled fit twice with an empty inductor cache of its own, then with the cache the
first run filled, so its first-epoch seconds say what a compile costs on a new machine and a second time.
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
    "compiled_steps (fashion_mlp)": ("fashion_mlp", 10, {}, {"flags": ["--model.init_args.compiled_steps", "false"]}),
    "compiled_steps (tiny_mlp)": ("tiny_mlp", 20, {}, {"flags": ["--model.init_args.compiled_steps", "false"]}),
    "steps_per_execution (dense512)": ("dense512", 5, {}, {"flags": ["--data.steps_per_execution", "1"]}),
    "steps_per_execution (softmax_regression)": ("softmax_regression", 0, {},
                                                 {"flags": ["--data.steps_per_execution", "1"]}),
    "channels_last (cnn)": ("cnn", 2, {}, {"flags": ["--model.init_args.channels_last", "false"]}),
    "one thread for a small step (softmax_regression)": ("softmax_regression", 0, {}, {"env": {"OMP_NUM_THREADS": "2"}}),
    "passive waiting, quiet machine (dense512)": ("dense512", 5, {}, {"env": {"OMP_WAIT_POLICY": "ACTIVE"}}),
    "passive waiting, quiet machine (cnn)": ("cnn", 2, {}, {"env": {"OMP_WAIT_POLICY": "ACTIVE"}}),
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
        if not args.only or any("cold" in word for word in args.only):
            cache = {"env": {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")},
                     "flags": ["--model.init_args.compiled_steps", "true"]}
            first = [fit("fashion_mlp", 1, cache, Path(tmp) / f"cold{k}")[0] for k in range(2)]
            print(f"{'cold compile: fashion_mlp epoch 1, empty cache / warm':<50} {first[0]:>7.2f} {first[1]:>7.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
