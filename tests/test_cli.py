"""The command line (mnist_lit/cli.py, __main__.py): configs, subcommands, and bad input in one line each."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_lit.cli import MnistCLI, resolve_config, resolve_config_args
from tests.helpers import REPO, fit, run

TUTORIALS = ["cnn", "dense512", "fashion_mlp", "softmax_regression", "tiny_mlp"]


@pytest.mark.parametrize("name", TUTORIALS)
def test_every_config_runs(name: str, data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert fit(f"{name}.yaml", data_root, out, "--trainer.fast_dev_run", "true") == 0
    printed = capsys.readouterr()
    assert "Test: loss: " in printed.out
    # none of Lightning's lines that ask nothing of the user (callbacks.NO_ACTION, NO_DEVICE)
    for line in (printed.out + printed.err).splitlines():
        assert not re.search(r"Seed set to|available: False|litlogger|Trainer.fit` stopped", line), line
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


def test_saved_config_reproduces_the_run(data_root: Path, tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert fit("dense512", data_root, first, "--trainer.max_epochs", "1", "--trainer.deterministic", "true") == 0
    assert run("fit", "--config", str(first / "config.yaml"), "--output_dir", str(second)) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert (a["test_acc"], a["test_loss"]) == (b["test_acc"], b["test_loss"])


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


@pytest.mark.slow
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
    (["--trainer.precision", "7"], "--trainer.precision: got 7; it takes one of 64, 32, 16, transformer-engine, "
                                   "transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, "
                                   "64-true, bf16 or null"),
    (["--trainer.max_epochs", "x"], "--trainer.max_epochs: got x; it takes a whole number or null"),
    (["--trainer.deterministic", "maybe"], "--trainer.deterministic: got maybe; it takes one of true, false, warn or null"),
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
    assert capsys.readouterr().err == (f"mnist_lit: error: --config nope.yaml: no file {tmp_path / 'nope.yaml'} and no "
                                       "tutorial of that name; one of dense512, cnn, tiny_mlp, fashion_mlp, "
                                       "softmax_regression (configs/NAME.yaml), or a path to a .yaml file "
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


def test_offline_without_data_is_one_line(tmp_path: Path, no_download, capsys):
    assert run("fit", "--config", "cnn", "--data.data_dir", str(tmp_path / "d"), "--output_dir", str(tmp_path)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    raw = tmp_path / "d" / "MNIST" / "raw"
    assert len(err) == 1 and err[0].startswith(f"mnist_lit: error: {raw}: no MNIST files, and torchvision's download failed")


@pytest.mark.slow
def test_corrupt_data_from_the_shell_is_one_line_without_traceback(data_root: Path, tmp_path: Path):
    bad = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:500])
    proc = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "cnn", "--data.data_dir",
                           str(data_root), "--output_dir", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"mnist_lit: error: {bad}: truncated gzip stream"


# each command and what its --help may import: the top level answers before torch, the others before Lightning
HELP_IMPORTS = {("--help",): "torch", ("--version",): "torch", ("report", "--help"): "lightning",
                ("export", "--help"): "lightning", ("classify", "--help"): "lightning",
                ("import-keras", "--help"): "lightning", ("serve", "--help"): "lightning"}
PROBE = """
import json, sys
from mnist_lit.__main__ import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # argparse's --help
    code = e.code
print(json.dumps({"code": code, "loaded": sorted({m.split('.')[0] for m in sys.modules})}))
"""


@pytest.mark.slow
def test_help_and_version_answer_before_the_heavy_imports():
    """`--help` of every command answers at once: Lightning's import alone takes seconds."""
    for args, unloaded in HELP_IMPORTS.items():
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=REPO)
        *text, last = done.stdout.strip().splitlines()
        result = json.loads(last)
        assert result["code"] == 0 and text, (args, done.stderr)
        assert unloaded not in result["loaded"], f"{' '.join(args)} imported {unloaded}"

    top = subprocess.run([sys.executable, "-m", "mnist_lit", "--help"], capture_output=True, text=True, cwd=REPO).stdout
    assert all(f"  {name} " in top for name in ("fit", "test", "report", "export", "classify", "import-keras", "serve"))
    version = subprocess.run([sys.executable, "-m", "mnist_lit", "--version"], capture_output=True, text=True).stdout
    from mnist_lit import __version__
    assert version.strip() == f"mnist_lit {__version__}"


@pytest.mark.parametrize("flag, value, named", [("--trainer.max_epochs", "-5", "must be a non-negative integer"),
                                                ("--trainer.devices", "0", "got 0; it takes a number of devices, 1 or more"),
                                                # Lightning's TypeError at construction, for the CPU
                                                ("--trainer.devices", "-1", "should be an int > 0"),
                                                ("--trainer.limit_train_batches", "-1", "invalid value -1"),
                                                ("--trainer.strategy", "nope", "invalid strategy name"),
                                                # accepted by Lightning, then a ZeroDivisionError at the first batch
                                                ("--trainer.val_check_interval", "0", "got 0; it takes a fraction of an epoch"),
                                                ("--trainer.accumulate_grad_batches", "0", "got 0; it takes a number of batches"),
                                                ("--trainer.check_val_every_n_epoch", "0", "got 0; it takes a number of epochs"),
                                                # accepted, and logged at every step
                                                ("--trainer.log_every_n_steps", "-1", "got -1; it takes a number of steps, 1 or more, or 0"),
                                                # refused by Lightning as the fit starts, once it knows the batches
                                                ("--trainer.val_check_interval", "100000", "the number of the training "
                                                                                           "batches")])
def test_trainer_arguments_lightning_refuses_are_one_line(flag: str, value: str, named: str, data_root: Path,
                                                          tmp_path: Path, capsys):
    assert fit("softmax_regression", data_root, tmp_path, flag, value) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mnist_lit: error: {flag}: ") and named in err[0]
    assert not (tmp_path / "last.ckpt").exists()
