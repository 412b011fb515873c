"""`import-keras`: Keras' own files become the tutorial they hold, with Keras' predictions; bad files get one line."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mnist_lit.errors import UserError
from mnist_lit.keras_file import read_keras, recognise, to_torch
from mnist_lit.model_files import load_weights, read_torchscript
from mnist_lit.models import CNN, TinyMLP
from tests.helpers import KERAS, REPO, run

FILES = {"cnn.keras": "cnn", "cnn.h5": "cnn", "dense512.keras": "dense512", "fashion_mlp.keras": "fashion_mlp",
         "softmax_regression.keras": "softmax_regression", "tiny_mlp.keras": "tiny_mlp", "tiny_mlp.h5": "tiny_mlp"}


def trace_inputs(name: str) -> tuple[torch.Tensor, np.ndarray]:
    trace = np.load(KERAS / f"{name}.trace.npz")
    return torch.from_numpy(trace["x"]).float().div(255).unsqueeze(1), trace["probs"]


@pytest.mark.parametrize("file", sorted(FILES))
def test_imported_model_gives_keras_probabilities(file: str, data_root: Path, tmp_path: Path, capsys):
    name, out = FILES[file], tmp_path / "out"
    assert run("import-keras", str(KERAS / file), "--output", str(out), "--data_dir", str(data_root)) == 0
    printed = capsys.readouterr().out
    assert f"the {name} tutorial" in printed and "Test: loss: " in printed  # data at hand: evaluated
    x, probs = trace_inputs(name)
    with torch.no_grad():
        ours = read_torchscript(out / "model.pt")[0](x).numpy()
    np.testing.assert_allclose(ours, probs, rtol=0, atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tutorial"] == name and metrics["test_samples"] == 200  # the synthetic test split


def test_imported_checkpoint_works_with_test_export_classify_and_report(data_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "cnn_keras"
    assert run("import-keras", str(KERAS / "cnn.keras"), "--output", str(out), "--data_dir", str(data_root)) == 0
    imported = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert run("test", "--config", "cnn", "--ckpt_path", str(out / "model.ckpt"), "--data.data_dir", str(data_root),
               "--output_dir", str(tmp_path / "test")) == 0
    line = next(li for li in capsys.readouterr().out.splitlines() if li.startswith("Test: "))
    assert float(line.rsplit("acc: ", 1)[1]) == pytest.approx(imported["test_acc"], abs=1e-4)  # Lightning agrees
    assert run("export", str(out / "model.ckpt"), "--format", "pt2") == 0
    digit = tmp_path / "digit.png"
    from PIL import Image

    x, _ = trace_inputs("cnn")
    Image.fromarray((255 - x[0, 0].numpy() * 255).astype(np.uint8)).save(digit)  # dark ink on paper
    assert run("classify", "--model", str(out / "model.pt2"), str(digit), "--json") == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["class"] in [str(d) for d in range(10)]
    for figure in ("confusion_matrix.png", "misclassified.png"):
        (out / figure).unlink()
    assert run("report", str(out), "--data_dir", str(data_root)) == 0
    assert (out / "confusion_matrix.png").is_file() and (out / "misclassified.png").is_file()


def test_without_test_data_it_still_imports_and_says_so(tmp_path: Path, capsys, no_download):
    out = tmp_path / "out"
    assert run("import-keras", str(KERAS / "softmax_regression.keras"), "--output", str(out),
               "--data_dir", str(tmp_path / "nothing"), "--dataset", "fashion_mnist") == 0
    printed = capsys.readouterr().out
    assert f"Test accuracy not measured: {tmp_path / 'nothing' / 'FashionMNIST' / 'raw'}: no FashionMNIST files" in printed
    assert (out / "model.pt").is_file()
    assert torch.load(out / "model.ckpt", weights_only=True)["mnist_lit"]["dataset"] == "fashion_mnist"


def test_damaged_test_data_still_imports_and_says_so(data_root: Path, tmp_path: Path, capsys):
    bad = data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    out = tmp_path / "out"
    assert run("import-keras", str(KERAS / "dense512.keras"), "--output", str(out), "--data_dir", str(data_root)) == 0
    printed = capsys.readouterr().out
    assert f"Test accuracy not measured: {bad}: truncated gzip stream" in printed
    assert (out / "model.ckpt").is_file() and (out / "model.pt").is_file() and not (out / "metrics.json").exists()


def test_default_output_folder_is_named_for_the_tutorial(data_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("import-keras", str(KERAS / "tiny_mlp.h5"), "--data_dir", str(data_root)) == 0
    assert (tmp_path / "checkpoints" / "tiny_mlp_keras" / "model.ckpt").is_file()


# ---------------------------------------------------------------- a Flatten after feature maps larger than 1 x 1


def write_keras(path: Path, layers: list[dict], weights: dict[str, list[np.ndarray]]) -> Path:
    """A Keras 3 file as `model.save` lays it out: config.json, and each layer's arrays under layers/."""
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": layers}}
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        for i, (name, arrays) in enumerate(weights.items()):
            group = h5.create_group(f"layers/layer_{i}/vars")
            group.attrs["name"] = name
            for j, a in enumerate(arrays):
                group[str(j)] = a
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        z.writestr("model.weights.h5", buffer.getvalue())
    return path


def layer(kind: str, name: str, **config) -> dict:
    return {"class_name": kind, "config": {"name": name, **config}}


def test_flatten_after_a_feature_map_reorders_the_dense_rows(tmp_path: Path):
    """Conv 4 3x3 -> pool -> 4 x 13 x 13 flattened -> Dense 10, against Keras' arithmetic in numpy."""
    rng = np.random.default_rng(0)
    k, b = rng.normal(size=(3, 3, 1, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    dk, db = rng.normal(size=(13 * 13 * 4, 10)).astype(np.float32) * 0.1, rng.normal(size=10).astype(np.float32)
    path = write_keras(tmp_path / "m.keras", [
        layer("InputLayer", "in", batch_shape=[None, 28, 28, 1]),
        layer("Conv2D", "c", filters=4, kernel_size=[3, 3], strides=[1, 1], padding="valid", activation="relu"),
        layer("MaxPooling2D", "p", pool_size=[2, 2], strides=[2, 2], padding="valid"),
        layer("Flatten", "f"), layer("Dense", "d", units=10, activation="softmax"),
    ], {"c": [k, b], "d": [dk, db]})
    x = rng.random((2, 28, 28, 1)).astype(np.float32)
    # Keras, channels-last: valid 3x3 convolution, relu, 2x2 pooling, flatten in (h, w, c) order, dense
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # N, 26, 26, 1, 3, 3
    conv = np.maximum(np.einsum("nhwcij,ijcf->nhwf", windows, k) + b, 0)
    pooled = conv.reshape(2, 13, 2, 13, 2, 4).max(axis=(2, 4))
    logits = pooled.reshape(2, -1) @ dk + db
    net = to_torch(read_keras(path)).eval()
    with torch.no_grad():
        ours = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4)
    # and the reordering is what makes it so: the rows as Keras stores them give other numbers
    assert np.abs(ours - (np.transpose(pooled, (0, 3, 1, 2)).reshape(2, -1) @ dk + db)).max() > 1e-2


# ---------------------------------------------------------------- bad files: one line, exit 1, nothing written


def dense512_with_units(tmp_path: Path, units: int) -> Path:
    rng = np.random.default_rng(0)
    return write_keras(tmp_path / f"dense{units}.keras", [
        layer("InputLayer", "in", batch_shape=[None, 784]),
        layer("Dense", "d1", units=units, activation="relu"), layer("Dense", "d2", units=10, activation="softmax"),
    ], {"d1": [rng.normal(size=(784, units)).astype(np.float32), np.zeros(units, np.float32)],
        "d2": [rng.normal(size=(units, 10)).astype(np.float32), np.zeros(10, np.float32)]})


def with_weights_edited(src: Path, dst: Path, edit) -> Path:
    """A copy of a .keras file whose model.weights.h5 was changed by `edit(h5)`."""
    with zipfile.ZipFile(src) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    buffer = io.BytesIO(parts["model.weights.h5"])
    with h5py.File(buffer, "a") as h5:
        edit(h5)
    parts["model.weights.h5"] = buffer.getvalue()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    return dst


def _replace(h5, key: str, value: np.ndarray) -> None:
    del h5[key]
    h5[key] = value


BAD_FILES = {
    "another architecture": (lambda d: dense512_with_units(d, 256), "dense512 has Dense 512 where the file has Dense 256"),
    "a weight missing": (lambda d: with_weights_edited(KERAS / "cnn.keras", d / "cnn.keras",
                                                       lambda h5: h5.__delitem__("layers/dense_1/vars/1")),
                         "layer dense_5 (Dense 500) has 1 weight arrays, expected 2 (kernel, bias)"),
    "a weight of the wrong shape": (lambda d: with_weights_edited(KERAS / "tiny_mlp.keras", d / "tiny.keras",
                                                                  lambda h5: _replace(h5, "layers/dense/vars/0", np.zeros((784, 8), np.float32))),
                                    "kernel has shape (784, 8), expected (784, 16)"),
    "a zip that is not Keras": (lambda d: _zip_of(d / "photos.keras"), "a zip file, but not a Keras model"),
    "an h5 with no model config": (lambda d: _weights_only_h5(d / "weights.h5"), "HDF5 file with no model config"),
    "a truncated file": (lambda d: _truncated(d / "cnn.h5"), "damaged Keras file"),
    "a text file": (lambda d: _write(d / "notes.keras", b"hello"), "not a Keras model file"),
    "no such file": (lambda d: d / "missing.keras", "no such file"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zip_of(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("photo.png", b"not really")
    return path


def _weights_only_h5(path: Path) -> Path:
    with h5py.File(path, "w") as h5:
        h5["dense/kernel"] = np.zeros((784, 10), np.float32)
    return path


def _truncated(path: Path) -> Path:
    return _write(path, (KERAS / "cnn.h5").read_bytes()[:300_000])


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_gets_one_line_and_writes_nothing(case: str, tmp_path: Path, capsys):
    make, reason = BAD_FILES[case]
    path = make(tmp_path)
    out = tmp_path / "out"
    assert run("import-keras", str(path), "--output", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and reason in err, err
    assert not out.exists()


# ---------------------------------------------------------------- fit from these weights


def weights_of(model, path: Path) -> dict[str, torch.Tensor]:
    load_weights(model, path)
    return model.net.state_dict()


def test_fit_option_weights_takes_keras_ckpt_and_pt_of_the_same_tutorial(data_root: Path, tmp_path: Path):
    out = tmp_path / "imported"
    assert run("import-keras", str(KERAS / "tiny_mlp.keras"), "--output", str(out), "--data_dir", str(data_root)) == 0
    expected = weights_of(TinyMLP(), KERAS / "tiny_mlp.keras")
    assert not torch.equal(TinyMLP().net[1].weight, expected["1.weight"])  # not a fresh initialisation
    for source in (out / "model.ckpt", out / "model.pt", KERAS / "tiny_mlp.h5"):
        loaded = weights_of(TinyMLP(), source)
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), source


@pytest.mark.slow
def test_fit_from_another_tutorials_weights_is_one_line_and_writes_nothing(data_root: Path, tmp_path: Path):
    with pytest.raises(UserError, match="holds the tiny_mlp tutorial's network, not cnn's"):
        load_weights(CNN(), KERAS / "tiny_mlp.keras")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", "cnn", "--data.data_dir", str(data_root),
                           "--output_dir", str(out), "--weights", str(KERAS / "dense512.keras")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line and not line.startswith("Seed set")] == [
        f"mnist_lit: error: {KERAS / 'dense512.keras'}: holds the dense512 tutorial's network, not cnn's"]
    assert not out.exists()


def test_weights_of_an_unknown_kind_are_refused(tmp_path: Path):
    path = _write(tmp_path / "w.npz", b"")
    with pytest.raises(UserError, match="must be a .keras, .h5, .ckpt or .pt file"):
        load_weights(CNN(), path)
    shutil.rmtree(tmp_path)


def test_either_order_of_relu_and_pool_is_the_cnn(tmp_path: Path):
    """Keras' cnn (and mnist_lit's) is conv, ReLU, pool; files of earlier mnist_lit releases pool first.
    Both layouts are the same network."""
    from torch import nn

    net = CNN().net
    keras_order = nn.Sequential(*[net[i] for i in (0, 2, 1, 3, 5, 4, 6, 8, 7)], *list(net)[9:])
    assert recognise(tmp_path / "a.keras", keras_order) == "cnn"
    assert recognise(tmp_path / "b.keras", net) == "cnn"
    with pytest.raises(UserError, match="not one of the tutorials' networks"):
        recognise(tmp_path / "c.keras", nn.Sequential(*list(net)[:1], *list(net)[2:]))  # a pool missing
