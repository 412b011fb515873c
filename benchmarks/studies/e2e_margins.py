"""What tests/test_e2e.py measures, over several seeds, to set its floors with a margin.

    python -m benchmarks.studies.e2e_margins [--seeds 0 1 2 3 4]

Run it from the repository root, where it imports the photo maker of the tests (tests/photos.py).

For each seed (`--seed_everything`, which also seeds the data order) it runs the e2e tests' trainings on
the shipped MNIST and Fashion-MNIST and the digit-photo check on the 2-epoch cnn, with
photos drawn from the same seed. It prints one row per seed, then the minimum and maximum of each column.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import REPO

RUNS = {  # column -> (config, extra arguments), as tests/test_e2e.py trains them
    "dense512 5 ep": ("dense512", []),
    "softmax 2000 steps": ("softmax_regression", []),
    "cnn 2 ep": ("cnn", ["--trainer.max_epochs", "2"]),
    "dense512 tv 1 ep": ("dense512", ["--trainer.max_epochs", "1", "--data.loader", "torchvision"]),
    "fashion 1 ep": ("fashion_mlp", ["--trainer.max_epochs", "1"]),
}


def fit(config: str, extra: list[str], seed: int, out: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", config, "--output_dir", str(out),
                           "--seed_everything", str(seed), "--data.seed", str(seed), "--data.download", "false",
                           "--data.data_dir", str(REPO / "data"), *extra], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"e2e_margins: {config} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads((out / "metrics.json").read_text())


def photos(model_file: Path, seed: int, folder: Path) -> tuple[float, float]:
    """MNIST framing and the tutorial's resize-only recipe on 200 digit photos: their accuracies."""
    from PIL import Image

    from mnist_lit import classify, data
    from tests.photos import write_photos

    images, labels = data.load_split(REPO / "data", "test")
    made = write_photos(images, labels, folder, count=200, seed=seed)
    model, meta = classify.load_model(model_file)
    ours = sum(classify.classify(model, meta, path)["index"] == label for path, label in made) / len(made)
    naive = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("L").resize((28, 28)),
                                                     dtype=np.float32) / 255)[None] for p, _ in made])
    right = float((model(naive).argmax(1) == torch.tensor([y for _, y in made])).float().mean())
    return ours, right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    columns = [*RUNS, "photos framed", "photos naive"]
    print(" | ".join(["seed", *columns]))
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            row = {}
            for name, (config, extra) in RUNS.items():
                row[name] = fit(config, extra, seed, Path(tmp) / name.replace(" ", "_"))["test_acc"]
                if name == "cnn 2 ep":
                    row["photos framed"], row["photos naive"] = photos(
                        Path(tmp) / "cnn_2_ep" / "model.pt", seed, Path(tmp) / "photos")
        rows.append(row)
        print(" | ".join([str(seed), *(f"{row[c]:.4f}" for c in columns)]), flush=True)
    print(" | ".join(["min", *(f"{min(r[c] for r in rows):.4f}" for c in columns)]))
    print(" | ".join(["max", *(f"{max(r[c] for r in rows):.4f}" for c in columns)]))


if __name__ == "__main__":
    main()
