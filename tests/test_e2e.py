"""Real training on the MNIST files shipped in data/ (marked e2e: about two minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_lit import data
from tests.test_cli import fit

pytestmark = pytest.mark.e2e
NO_DATA_DIR = "no-such-data-dir"  # so the lookup falls through to the shipped copy


def trained(config: str, tmp_path: Path, *extra: str) -> dict:
    assert fit(config, tmp_path / NO_DATA_DIR, tmp_path / "out", "--data.download", "false", *extra) == 0
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_dense512_published_recipe_reaches_keras_accuracy(tmp_path: Path):
    metrics = trained("dense512", tmp_path)  # 5 epochs of batch 128, as published
    assert metrics["test_samples"] == 10_000 and metrics["epochs"] == 5
    assert metrics["test_acc"] >= 0.975


def test_softmax_regression_published_recipe(tmp_path: Path):
    metrics = trained("softmax_regression", tmp_path)  # 2000 SGD steps on the summed loss
    assert metrics["steps"] == 2000 and metrics["test_acc"] >= 0.90


def test_two_epochs_of_cnn(tmp_path: Path):
    assert trained("cnn", tmp_path, "--trainer.max_epochs", "2")["test_acc"] >= 0.97  # 0.9772 measured


def test_torchvision_loader_trains_as_well(tmp_path: Path):
    metrics = trained("dense512", tmp_path, "--trainer.max_epochs", "1", "--data.loader", "torchvision",
                      "--data.data_dir", str(tmp_path / "tv"))
    assert metrics["test_acc"] >= 0.95


def test_one_epoch_of_fashion_mlp(tmp_path: Path):
    try:
        data.locate("fashion_mnist", tmp_path, allow_download=False)
    except data.DataError:
        pytest.skip("Fashion-MNIST not on this machine (apt-get install dataset-fashion-mnist)")
    assert trained("fashion_mlp", tmp_path, "--trainer.max_epochs", "1")["test_acc"] >= 0.80
