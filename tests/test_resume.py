"""`--ckpt_path`: resuming a run, and the checkpoints it refuses (damaged, foreign, another tutorial's), in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import fit, run


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


def test_damaged_last_checkpoint_names_the_previous_one_which_resumes(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "2") == 0
    previous = out / "previous.ckpt"  # last.ckpt's predecessor: epoch 1 of 2
    assert torch.load(previous, weights_only=True)["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1
    (out / "last.ckpt").write_bytes((out / "last.ckpt").read_bytes()[:5000])  # a bad copy, a full disk
    capsys.readouterr()
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'last.ckpt'}: not a readable checkpoint" in err
    assert err.rstrip().endswith(f"the epoch before it is kept: continue with --ckpt_path {previous}")
    assert fit("tiny_mlp", data_root, out, "--trainer.max_epochs", "3", "--ckpt_path", str(previous)) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3


def test_resume_past_max_epochs_is_one_line(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert fit("dense512", data_root, out, "--trainer.max_epochs", "3") == 0
    capsys.readouterr()
    assert fit("dense512", data_root, out, "--trainer.max_epochs", "1", "--ckpt_path", "last") == 1
    assert capsys.readouterr().err == (f"mnist_lit: error: {out / 'last.ckpt'}: already trained 3 epochs, more than "
                                       f"--trainer.max_epochs 1; ask for 3 or more to continue it, or evaluate it "
                                       f"with `test --ckpt_path {out / 'last.ckpt'}`\n")


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such checkpoint file"),
    (lambda p: p.write_text("weights: 1\n"), "a text file (it starts 'weights: 1'), not a checkpoint"),
    (lambda p: torch.save({"state_dict": {}}, p), "not an mnist_lit checkpoint"),
])
def test_bad_checkpoints_are_one_line(make, message, tmp_path: Path, capsys):
    path = tmp_path / "model.ckpt"
    make(path)
    assert run("test", "--config", "cnn", "--ckpt_path", str(path)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnist_lit: error: {path}: {message}") and err.count("\n") == 1


def test_truncated_and_foreign_checkpoints(data_root: Path, tmp_path: Path, capsys):
    assert fit("dense512", data_root, tmp_path, "--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    # another tutorial than the config's: one line naming both, not a test of a model nobody asked for
    assert run("test", "--config", "cnn", "--data.data_dir", str(data_root), "--output_dir", str(tmp_path / "t"),
               "--ckpt_path", str(tmp_path / "model.ckpt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the dense512 tutorial, but the config is cnn's" in err
    assert not (tmp_path / "t").exists()
    # a checkpoint without its class (saved outside the CLI, as a Python fit's): named in one line, not a parser dump
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    torch.save(checkpoint, tmp_path / "classless.ckpt")
    assert run("test", "--config", "dense512", "--data.data_dir", str(data_root), "--ckpt_path",
               str(tmp_path / "classless.ckpt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "classless.ckpt: saved outside the Lightning CLI" in err and "a dense512 model" in err
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((tmp_path / "model.ckpt").read_bytes()[:5000])
    assert run("test", "--config", "dense512", "--ckpt_path", str(cut)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnist_lit: error: {cut}: not a readable checkpoint") and err.count("\n") == 1


def test_fit_from_the_tested_weights_alone_is_one_line_naming_what_to_do(data_root: Path, tmp_path: Path, capsys):
    """model.ckpt holds no optimizer state: a fit cannot resume from it (Lightning stopped with a KeyError
    traceback); it can start from its weights."""
    assert fit("dense512", data_root, tmp_path, "--trainer.max_epochs", "1") == 0
    capsys.readouterr()
    assert fit("dense512", data_root, tmp_path / "again", "--trainer.max_epochs", "2",
               "--ckpt_path", str(tmp_path / "model.ckpt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the tested weights only, no training state to resume" in err
    assert f"--weights {tmp_path / 'model.ckpt'}" in err and not (tmp_path / "again").exists()
    assert fit("dense512", data_root, tmp_path / "again", "--trainer.max_epochs", "1",
               "--weights", str(tmp_path / "model.ckpt")) == 0
