"""A learner's first hour: the bad inputs a newcomer types end in one line saying what to type instead, the
data line reads true, and Fashion-MNIST ships beside MNIST."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from mnist_lit import data
from tests.helpers import REPO, fit, run

TUTORIALS = "dense512, cnn, tiny_mlp, fashion_mlp, softmax_regression"


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("mnist_lit: error: ") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------- flags and configs


@pytest.mark.skipif(os.environ.get("MNIST_LIT_TEST_ON_GPU") == "1", reason="needs a machine where torch sees no GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_asked_for_where_there_is_none(accelerator: str, data_root: Path, tmp_path: Path, capsys):
    assert fit("dense512", data_root, tmp_path / "out", "--trainer.accelerator", accelerator) == 1
    err = one_line(capsys)
    assert f"--trainer.accelerator {accelerator}: torch finds no such device" in err
    assert err.rstrip().endswith("or pass --trainer.accelerator cpu") and not (tmp_path / "out").exists()


def test_an_unknown_config_name_lists_the_five(capsys):
    assert run("fit", "--config", "cnnn") == 2
    err = one_line(capsys)
    assert err.startswith("mnist_lit: error: --config cnnn: no file ") and f"one of {TUTORIALS}" in err


@pytest.mark.parametrize("habit, instead", [
    (["--epochs", "3"], "--epochs 3: not an option of this CLI; use --trainer.max_epochs 3"),
    (["--max_epochs=3"], "--max_epochs 3: not an option of this CLI; use --trainer.max_epochs 3"),
    (["--batch_size", "64"], "--batch_size 64: not an option of this CLI; use --data.batch_size 64"),
    (["--lr", "0.01"], "--lr 0.01: not an option of this CLI; use --model.init_args.lr 0.01"),
])
def test_keras_and_argparse_habits_name_the_real_flag(habit: list[str], instead: str, tmp_path: Path, capsys):
    assert run("fit", "--config", "cnn", "--output_dir", str(tmp_path / "out"), *habit) == 2
    assert one_line(capsys) == f"mnist_lit: error: {instead} (--help lists the options)\n"


# ---------------------------------------------------------------- files that are not checkpoints


class RunsCode:
    """A pickle that would make a folder when loaded: loading it must not (weights_only=True)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def _png(p: Path) -> None:
    from PIL import Image

    Image.new("L", (28, 28)).save(p, format="PNG")


def _jpeg(p: Path) -> None:
    from PIL import Image

    Image.new("RGB", (28, 28)).save(p, format="JPEG")


@pytest.mark.parametrize("make, looks_like", [
    (_png, "a PNG image, not a checkpoint; pass a .ckpt that fit wrote"),
    (_jpeg, "a JPEG image, not a checkpoint; pass a .ckpt that fit wrote"),
    (lambda p: p.write_text("model: cnn\n"), "a text file (it starts 'model: cnn'), not a checkpoint"),
    (lambda p: p.write_bytes(b""), "an empty file (0 bytes), not a checkpoint; pass a .ckpt that fit wrote"),
    (lambda p: torch.save({"state_dict": RunsCode(p.parent / "ran")}, p),
     "refused: a pickle that would run code when loaded (posix.mkdir)"),
    (lambda p: p.write_bytes(pickle.dumps(RunsCode(p.parent / "ran"))),
     "refused: a pickle that would run code when loaded (posix.mkdir)"),
], ids=["png", "jpeg", "text", "empty", "torch-pickle-running-code", "bare-pickle-running-code"])
def test_a_file_that_is_not_a_checkpoint_says_what_it_looks_like(make, looks_like: str, tmp_path: Path, capsys):
    path = tmp_path / "given.ckpt"
    make(path)
    assert run("test", "--config", "cnn", "--ckpt_path", str(path)) == 1
    err = one_line(capsys)
    assert err.startswith(f"mnist_lit: error: {path}: {looks_like}"), err
    assert "checkpoints/<tutorial>/model.ckpt" in err
    assert not (tmp_path / "ran").exists(), "the file's code ran"


# ---------------------------------------------------------------- the data line and the shipped data


def test_the_default_data_folder_is_the_shipped_one_from_the_repo_root(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    assert data.MNISTDataModule().source == REPO / "data" / "MNIST" / "raw"
    assert data.MNISTDataModule(dataset="fashion_mnist").source == REPO / "data" / "FashionMNIST" / "raw"


def test_elsewhere_the_line_names_the_data_folder_it_looked_in(tmp_path: Path, monkeypatch, no_download, capsys):
    """From a notebook's folder, "data" is not the repo's data/: the lines say where, absolutely."""
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "MNIST" / "raw"
    with pytest.raises(data.DataError) as e:
        data.MNISTDataModule().prepare_data()
    assert capsys.readouterr().out == f"Data: no MNIST files in {raw}; downloading them with torchvision\n"
    assert str(e.value).startswith(f"{raw}: no MNIST files, and torchvision's download failed (URLError: ")
    assert str(e.value).endswith(f" in {raw}, or pass --data.data_dir DIR") and "\n" not in str(e.value)


FASHION_SHA256 = {  # the .gz files as shipped (Debian's dataset-fashion-mnist compression)
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MD5 = {  # the decompressed files, as Zalando distributes them
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def test_fashion_mnist_ships_with_its_sums_and_licence():
    shipped = REPO / "data" / "FashionMNIST"
    listed = dict(reversed(line.split()) for line in (shipped / "SHA256SUMS").read_text().splitlines())
    assert listed == {f"raw/{name}": sha for name, sha in FASHION_SHA256.items()}
    for name, sha in FASHION_SHA256.items():
        blob = (shipped / "raw" / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == sha, name
        assert hashlib.md5(gzip.decompress(blob)).hexdigest() == FASHION_MD5[name.removesuffix(".gz")], name
    assert "Zalando" in (shipped / "LICENSE").read_text()
    # read as torchvision's FashionMNIST, from the repo's data folder, with nothing but files added to it
    images, labels = data.load_split(REPO / "data", "test", "fashion_mnist")
    assert images.shape == (10_000, 1, 28, 28) and labels.bincount().tolist() == [1000] * 10
    assert set((shipped / "raw").iterdir()) == {shipped / "raw" / n for n in [*FASHION_MD5, *FASHION_SHA256]}


def test_quiet_lightning_drops_a_flop_count_of_zero_only():
    from mnist_lit.callbacks import quiet_lightning

    quiet_lightning()
    summary = logging.getLogger("lightning.pytorch.callbacks.model_summary")
    for flops, kept in (("0", False), ("1.2 M", True)):
        record = summary.makeRecord(summary.name, logging.INFO, __file__, 0,
                                    f"\n407 K     Total params\n{flops:<10}Total Flops", None, None)
        assert summary.filter(record)
        assert ("Total Flops" in record.getMessage()) == kept and "Total params" in record.getMessage()


def test_output_piped_into_head_ends_without_a_traceback():
    # `python -m mnist_lit report RUN | head -2`: head leaves before the command's last line; the pipe is
    # closed here before the command starts writing, so every write meets a reader that has gone
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "mnist_lit", "--help"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and "Traceback" not in err and "BrokenPipeError" not in err, err
