"""The command line as a user meets it: configs, outputs, resume, Trainer flags, and bad input."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnist_lit import model_files
from mnist_lit.data import load_split
from mnist_lit.cli import MnistCLI, resolve_config, resolve_config_args
from tests.helpers import REPO, TEST, fit, run

TUTORIALS = ["cnn", "dense512", "fashion_mlp", "softmax_regression", "tiny_mlp"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_every_config_runs(name: str, data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert fit(f"{name}.yaml", data_root, out, "--trainer.fast_dev_run", "true") == 0
    assert "Test: loss: " in capsys.readouterr().out
    assert not (out / "metrics.json").exists(), "a smoke run must not write results"


@pytest.mark.parametrize("name", TUTORIALS)
def test_configs_hold_the_published_recipe(name: str):
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    recipe = {"dense512": (5, 128, "none"), "cnn": (10, 128, "none"), "tiny_mlp": (20, 32, "test"),
              "fashion_mlp": (10, 32, "none"), "softmax_regression": (None, 64, "none")}[name]
    data = config.get("data", {})
    assert (config["trainer"].get("max_epochs"), data.get("batch_size", 128), data.get("val", "none")) == recipe
    if name == "softmax_regression":
        assert config["trainer"]["max_steps"] == 2000
    assert data.get("dataset", "mnist") == ("fashion_mnist" if name == "fashion_mlp" else "mnist")
    assert (REPO / "configs" / f"{name}.yaml").read_text().startswith("# ")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_bar_and_then_the_epoch_line(data_root: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert fit("tiny_mlp", data_root, tmp_path, "--trainer.max_epochs", "2", "--data.steps_per_execution", "1") == 0
    frames = [frame for frame in terminal.getvalue().split("\r") if "ms/step" in frame]
    for epoch in (1, 2):  # each epoch's bar starts drawn, with Keras' fields: steps, elapsed, ETA, ms per step
        assert f"Epoch {epoch}/2 - 0/20 [....." in "".join(frames)
    assert all(re.fullmatch(r"Epoch [12]/2 - \d+/20 \[[=.]+\] \d\d:\d\d ETA (\?|\d\d:\d\d) - \d+ms/step", f.strip())
               for f in frames), frames
    lines = terminal.getvalue().replace("\r", "\n").splitlines()  # after the bar, the line a log also gets
    assert [line[:20] for line in lines if re.match(r"Epoch \d/2 - 20/20 - [\d.]+s - loss: ", line)] == [
        "Epoch 1/2 - 20/20 - ", "Epoch 2/2 - 20/20 - "]


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


def test_saved_config_reproduces_the_run(data_root: Path, tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert fit("dense512", data_root, first, "--trainer.max_epochs", "1", "--trainer.deterministic", "true") == 0
    assert run("fit", "--config", str(first / "config.yaml"), "--output_dir", str(second)) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])


def test_resume_from_last_keeps_the_history(data_root: Path, tmp_path: Path):
    out = tmp_path / "cnn"
    assert fit("cnn", data_root, out, "--trainer.max_epochs", "1") == 0
    assert fit("cnn", data_root, out, "--trainer.max_epochs", "2", "--ckpt_path", "last") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["history"]] == [1, 2] and metrics["steps"] == 2 * 5


def test_resume_with_no_checkpoint_yet_starts_from_scratch_and_says_so(data_root: Path, tmp_path: Path, capsys,
                                                                      recwarn):
    out = tmp_path / "new"
    assert fit("softmax_regression", data_root, out, "--trainer.max_steps", "20", "--ckpt_path", "last") == 0
    assert f"--ckpt_path last: no last.ckpt in {out} yet, so training starts from scratch" in capsys.readouterr().out
    # Lightning's own warning ("HINT: Set ModelCheckpoint(..., save_last=True)") points at code users cannot change
    assert not [w for w in recwarn if "no last checkpoint" in str(w.message)]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20


def test_checkpoint_of_another_tutorial_is_refused_and_nothing_is_written(data_root: Path, tmp_path: Path, capsys):
    dense = tmp_path / "dense512"
    assert fit("dense512", data_root, dense, "--trainer.max_epochs", "1") == 0
    before = {p.name: p.stat().st_mtime_ns for p in dense.iterdir()}
    capsys.readouterr()
    assert fit("cnn", data_root, tmp_path / "cnn", "--ckpt_path", str(dense / "last.ckpt")) == 1
    assert capsys.readouterr().err == (f"mnist_lit: error: {dense / 'last.ckpt'}: holds the dense512 tutorial, but the "
                                       "config is cnn's; use --config dense512, or another checkpoint\n")
    assert not (tmp_path / "cnn").exists()
    assert {p.name: p.stat().st_mtime_ns for p in dense.iterdir()} == before


def test_resuming_keeps_the_checkpoints_hyperparameters_and_says_which(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "tiny"
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "2", "--model.init_args.dropout", "0.5",
               "--ckpt_path", str(out / "last.ckpt")) == 0
    assert f"{out / 'last.ckpt'}: the model keeps the checkpoint's dropout 0.2 (not 0.5)" in capsys.readouterr().out
    assert torch.load(out / "model.ckpt", weights_only=True)["hyper_parameters"]["dropout"] == 0.2


def test_test_and_validate_a_saved_model(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "d"
    assert fit("dense512", data_root, out, "--trainer.max_epochs", "1") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    acc, loss = metrics["test_acc"], metrics["test_loss"]
    capsys.readouterr()
    assert run("test", "--config", "dense512", "--data.data_dir", str(data_root), "--output_dir", str(out),
               "--ckpt_path", str(out / "model.ckpt")) == 0
    assert f"Test: loss: {loss:.4f} - acc: {acc:.4f}" in capsys.readouterr().out
    assert run("validate", "--config", "tiny_mlp", "--data.data_dir", str(data_root), "--output_dir",
               str(tmp_path / "v")) == 0
    assert "Validation: loss: " in capsys.readouterr().out


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
    images, labels = load_split(data_root / "MNIST" / "raw", "test")
    with torch.no_grad():
        probs = net(images.float() / 255).softmax(1)
    assert [int(r.split(",")[1]) for r in rows[1:]] == labels.tolist()
    assert [int(r.split(",")[2]) for r in rows[1:]] == probs.argmax(1).tolist()
    assert [float(r.split(",")[3]) for r in rows[1:]] == pytest.approx(probs.max(1).values.tolist(), abs=2e-6)
    return rows


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


def test_fit_writes_into_checkpoints_of_the_tutorial_by_default(data_root: Path, tmp_path: Path):
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "tiny_mlp", "--data.data_dir",
                           str(data_root), "--trainer.max_epochs", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "checkpoints" / "tiny_mlp"  # relative to where it ran
    assert {p.name for p in out.iterdir()} >= {"model.ckpt", "last.ckpt", "metrics.json", "config.yaml", "model.pt"}
    assert f"Saved {Path('checkpoints') / 'tiny_mlp' / 'model.ckpt'}" in done.stdout


def test_verbose_shows_the_traceback_behind_the_line(tmp_path: Path):
    command = [sys.executable, "-m", "mnist_lit", "classify", "--model", str(tmp_path / "missing.pt"), "x.png"]
    quiet = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    loud = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "MNIST_LIT_VERBOSE": "1"})
    assert quiet.returncode == 1 and quiet.stderr == f"mnist_lit: error: {tmp_path / 'missing.pt'}: no such model file\n"
    assert loud.returncode == 1 and loud.stderr.startswith("Traceback (most recent call last):")
    assert loud.stderr.rstrip().endswith(f"mnist_lit.errors.UserError: {tmp_path / 'missing.pt'}: no such model file")


def test_print_config_starts_a_config(capsys):
    assert run("fit", "--config", "fashion_mlp", "--print_config") == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "mnist_lit.models.FashionMLP"
    assert config["data"]["batch_size"] == 32 and config["data"]["dataset"] == "fashion_mnist"


def test_data_set_is_linked_into_the_model():
    cli = MnistCLI(args=["--config", resolve_config("fashion_mlp")], run=False)
    assert cli.model.hparams.dataset == "fashion_mnist" and cli.model.classes[9] == "Ankle boot"
    cli = MnistCLI(args=["--config", resolve_config("cnn"), "--data.dataset", "fashion_mnist"], run=False)
    assert cli.model.classes[0] == "T-shirt/top"


def test_bare_config_names():
    assert resolve_config("cnn.yaml") == resolve_config("cnn")
    assert Path(resolve_config("cnn")).read_text().startswith("# Keras CNN")
    assert resolve_config("no-such.yaml") == "no-such.yaml"
    assert resolve_config_args(["fit", "--config=cnn", "-c", "tiny_mlp.yaml"])[1:] == [
        f"--config={resolve_config('cnn')}", "-c", resolve_config("tiny_mlp")]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, expected", [
    (["--model", "Resnet50"], "--model Resnet50: not a tutorial; one of CNN, Dense512, FashionMLP, "
                              "SoftmaxRegression, TinyMLP"),
    (["--data.batch_size", "many"], "--data.batch_size: Not of type PositiveInt: invalid literal for int()"),
    (["--data.dataset", "cifar10"], "--data.dataset: Expected a typing.Literal['mnist', 'fashion_mnist']. "
                                    "Got value: cifar10"),
    (["--data.shuffle_buffer", "3"], "unrecognized arguments: --data.shuffle_buffer 3"),
    (["--model.init_args.optimizer", "adagrad"], "--model.init_args.optimizer (CNN): Expected a "
                                                 "typing.Literal['rmsprop', 'adam', 'sgd']. Got value: adagrad"),
    (["--data.batch_size", "0"], "--data.batch_size: Not of type PositiveInt: 0 does not conform to restriction v>0"),
    (["--model.init_args.lr", "-1"], "--model.init_args.lr (CNN): Not of type PositiveFloat: -1 does not conform "
                                     "to restriction v>0"),
    (["--model", "TinyMLP", "--model.init_args.dropout", "1.5"], "--model.init_args.dropout (TinyMLP): Not of type "
                                                                 "DropoutRate: 1.5 does not conform to restriction"),
])
def test_bad_flags_are_one_line_naming_the_flag_and_the_rule(args, expected, tmp_path: Path, capsys):
    # were parsing ever to succeed, a one-batch run into a temporary folder: nothing lands in the repo
    assert run("fit", "--config", "cnn", "--output_dir", str(tmp_path / "out"), "--trainer.fast_dev_run", "true",
               *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mnist_lit: error: {expected}") and err.count("\n") == 1, err
    assert err.endswith(" (--help lists the options)\n") and not (tmp_path / "out").exists()


def test_missing_config_file(tmp_path: Path, capsys):
    assert run("fit", "--config", str(tmp_path / "nope.yaml")) == 2
    assert capsys.readouterr().err == (f"mnist_lit: error: --config: File does not exist: '{tmp_path / 'nope.yaml'}' "
                                       "(--help lists the options)\n")


@pytest.mark.parametrize("loader", ["memory", "torchvision"])
def test_holdout_larger_than_the_data_is_one_line(loader: str, data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert fit("cnn", data_root, out, "--data.val", "holdout", "--data.val_size", "100000",
               "--data.loader", loader) == 1
    err = capsys.readouterr().err
    assert err == "mnist_lit: error: data.val_size 100000 leaves no training data (640 samples)\n"
    assert not (out / "last.ckpt").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("name", ["dense512", "tiny_mlp"])
def test_validate_a_saved_model_with_and_without_validation_data(name: str, data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert fit(name, data_root, out, "--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    args = ("validate", "--config", str(REPO / "configs" / f"{name}.yaml"), "--data.data_dir", str(data_root),
            "--output_dir", str(out), "--ckpt_path", str(out / "model.ckpt"))
    if name == "tiny_mlp":  # val: test, as the TF2 tutorial: validation is the test set, so equal to test_acc
        assert run(*args) == 0
        acc = json.loads((out / "metrics.json").read_text())["test_acc"]
        assert f"- acc: {acc:.4f}" in next(li for li in capsys.readouterr().out.splitlines() if li.startswith("Validation: "))
    else:  # val: none
        assert run(*args) == 1
        assert "no validation data (data.val is none)" in capsys.readouterr().err
        assert run(*args, "--data.val", "holdout", "--data.val_size", "100") == 0
        assert "Validation: loss: " in capsys.readouterr().out


def test_offline_without_data_is_one_line(tmp_path: Path, no_download, monkeypatch, capsys):
    from mnist_lit import data

    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "nothing")
    assert run("fit", "--config", "cnn", "--data.data_dir", str(tmp_path / "d"), "--output_dir", str(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mnist_lit: error: MNIST not found and the download failed")


def test_corrupt_data_from_the_shell_is_one_line_without_traceback(data_root: Path, tmp_path: Path):
    bad = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:500])
    proc = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "cnn", "--data.data_dir",
                           str(data_root), "--output_dir", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"mnist_lit: error: {bad}: truncated gzip stream"
