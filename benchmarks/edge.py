"""fp32 against int8 for phones and edge devices: each tutorial's ExecuTorch (.pte) and ONNX exports.

Run by hand from the repository root, not in the tests, on checkpoints that a fit wrote:

    python -m benchmarks.edge --checkpoints DIR [--tutorials cnn dense512] [--keep OUT]

DIR holds <tutorial>/model.ckpt (as `python -m mnist_lit fit --config <tutorial> --output_dir DIR/<tutorial>`
writes it). For each tutorial it exports `--format pte` and `--format onnx`, each plain and `--quantize int8`
(calibrated on training images), loads each file as classify and serve do (`model_files.load_model`: the
ExecuTorch runtime, onnxruntime), and prints per runtime: test accuracy on the 10,000 test images in fp32
and int8, the file sizes, and the median latency of one image and of a batch of 256. The fp32 and int8
files of a runtime are timed in alternation, round after round, so that a busy machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.fits import CONFIGS
from mnist_lit import data, export, model_files

RUNTIMES = {"pte": "ExecuTorch (XNNPACK)", "onnx": "ONNX Runtime (CPU)"}


def seconds(model: model_files.Predict, x: torch.Tensor, calls: int) -> float:
    """The median of `calls` timed calls (after one untimed)."""
    model(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def accuracy(model: model_files.Predict, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(1) == labels).float().mean().item()


def measure(tutorial: str, checkpoint: Path, out: Path, rounds: int) -> list[str]:
    _, meta = model_files.load_model(checkpoint)
    images, labels = data.load_split("data", "test", meta["dataset"])
    images = images.float() / 255
    eager, _ = model_files.load_model(checkpoint)
    rows = []
    for fmt, runtime in RUNTIMES.items():
        files = {kind: export.export(checkpoint, fmt, out / f"{tutorial}{'.int8' if kind == 'int8' else ''}"
                                     f"{export.FORMATS[fmt]}", quantize, "data")
                 for kind, quantize in (("fp32", None), ("int8", "int8"))}
        models = {kind: model_files.load_model(path)[0] for kind, path in files.items()}
        acc = {kind: accuracy(model, images, labels) for kind, model in models.items()}
        one, batch = images[:1], images[:256]
        latency = {kind: {"one": [], "batch": []} for kind in models}
        for _ in range(rounds):
            for kind, model in models.items():
                latency[kind]["one"].append(seconds(model, one, 50))
                latency[kind]["batch"].append(seconds(model, batch, 5))
        ms = {kind: {k: statistics.median(v) * 1e3 for k, v in times.items()} for kind, times in latency.items()}
        size = {kind: path.stat().st_size / 1e3 for kind, path in files.items()}
        rows.append(f"| {tutorial} | {runtime} | {accuracy(eager, images, labels):.4f} | {acc['fp32']:.4f} | "
                    f"{acc['int8']:.4f} | {size['fp32']:.0f} | {size['int8']:.0f} | "
                    f"{ms['fp32']['one']:.3f} | {ms['int8']['one']:.3f} | "
                    f"{ms['fp32']['batch']:.2f} | {ms['int8']['batch']:.2f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, required=True, help="a folder holding <tutorial>/model.ckpt")
    parser.add_argument("--tutorials", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds, fp32 and int8 alternated (default 5)")
    parser.add_argument("--keep", type=Path, help="write the exported files here and keep them")
    args = parser.parse_args()
    header = [f"torch {torch.__version__}, {torch.get_num_threads()} threads; latency: median ms of a call",
              "| tutorial | runtime | checkpoint acc | fp32 acc | int8 acc | fp32 KB | int8 KB | fp32 ms/image | "
              "int8 ms/image | fp32 ms/256 | int8 ms/256 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="mnist_lit-edge-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for tutorial in args.tutorials:
            measure(tutorial, args.checkpoints / tutorial / "model.ckpt", out, args.rounds)


if __name__ == "__main__":
    main()
