"""What a run writes (mnist_lit/outputs.py): the output folder, where it goes by default, and predictions.csv."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnist_lit import model_files
from mnist_lit.data import load_split
from tests.helpers import REPO, TEST, fit, run


def test_fit_writes_the_outputs_and_can_run_again(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "tiny"
    for _ in range(2):  # the second run replaces the first one's files
        assert fit("tiny_mlp.yaml", data_root, out, "--trainer.max_epochs", "2") == 0
    printed = capsys.readouterr().out
    assert "Epoch 2/2 - 20/20 - " in printed and "val_acc: " in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["params"] == 13_002 and metrics["epochs"] == 2 and metrics["test_samples"] == TEST
    assert len(metrics["epoch_seconds"]) == 2 and all(s > 0 for s in metrics["epoch_seconds"])
    assert metrics["test_acc"] > 0.5, "the synthetic classes are easy: the run did not learn"
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(metrics["history"][-1])
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt", "model.ckpt", "previous.ckpt"]
    assert (out / "model.pt").is_file()  # the tested model, for torch.jit.load
    ckpt = torch.load(out / "model.ckpt", weights_only=True)  # plain values only
    assert ckpt["mnist_lit"]["tutorial"] == "tiny_mlp" and ckpt["hyper_parameters"]["dataset"] == "mnist"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["class_path"] == "mnist_lit.models.TinyMLP" and config["trainer"]["max_epochs"] == 2


@pytest.mark.slow
def test_fit_writes_into_checkpoints_of_the_tutorial_by_default(data_root: Path, tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "tiny_mlp", "--data.data_dir",
                           str(data_root), "--trainer.max_epochs", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "checkpoints" / "tiny_mlp"  # relative to where it ran
    assert {p.name for p in out.iterdir()} >= {"model.ckpt", "last.ckpt", "metrics.json", "config.yaml", "model.pt"}
    assert f"Saved {Path('checkpoints') / 'tiny_mlp' / 'model.ckpt'}" in done.stdout


def test_predict_writes_probabilities(data_root: Path, tmp_path: Path):
    predicted_rows(data_root, tmp_path)


def predicted_rows(data_root: Path, tmp_path: Path) -> list[str]:
    """predictions.csv of a one-epoch dense512, checked row by row against the saved model."""
    assert fit("dense512", data_root, tmp_path, "--trainer.max_epochs", "1") == 0
    assert run("predict", "--config", "dense512", "--data.data_dir", str(data_root), "--output_dir", str(tmp_path),
               "--ckpt_path", str(tmp_path / "model.ckpt")) == 0
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "index,label,predicted,probability" and len(rows) == TEST + 1
    right = sum(r.split(",")[1] == r.split(",")[2] for r in rows[1:]) / TEST
    assert abs(right - json.loads((tmp_path / "metrics.json").read_text())["test_acc"]) < 1e-6
    # each row: the saved model's most probable class for that test image, and its probability
    net, _ = model_files.checkpoint_model(tmp_path / "model.ckpt")
    images, labels = load_split(data_root, "test")
    with torch.no_grad():
        probs = net(images.float() / 255).softmax(1)
    assert [int(r.split(",")[1]) for r in rows[1:]] == labels.tolist()
    assert [int(r.split(",")[2]) for r in rows[1:]] == probs.argmax(1).tolist()
    assert [float(r.split(",")[3]) for r in rows[1:]] == pytest.approx(probs.max(1).values.tolist(), abs=2e-6)
    return rows


@pytest.mark.slow
def test_predict_in_two_processes_writes_the_same_csv(data_root: Path, tmp_path: Path):
    alone = predicted_rows(data_root, tmp_path)
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "predict", "--config", "dense512", "--data.data_dir",
                           str(data_root), "--output_dir", str(tmp_path / "ddp"), "--ckpt_path",
                           str(tmp_path / "model.ckpt"), "--trainer.strategy", "ddp", "--trainer.devices", "2",
                           "--trainer.accelerator", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Saved {TEST} predictions to {tmp_path / 'ddp' / 'predictions.csv'}" in done.stdout
    together = (tmp_path / "ddp" / "predictions.csv").read_text().splitlines()
    assert [r.rsplit(",", 1)[0] for r in together] == [r.rsplit(",", 1)[0] for r in alone]
    assert [float(r.rsplit(",", 1)[1]) for r in together[1:]] == pytest.approx(
        [float(r.rsplit(",", 1)[1]) for r in alone[1:]], abs=2e-6)
