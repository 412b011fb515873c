"""Exported models equal the checkpoint model and load with nothing of mnist_lit or Lightning."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mnist_lit import export, model_files
from mnist_lit.models import TUTORIALS
from tests.helpers import make_checkpoint, run

LOADER = textwrap.dedent("""
    import json, sys
    import torch
    fmt, model_path, inputs_path, out_path = sys.argv[1:]
    inputs = torch.load(inputs_path)
    files = {"mnist_lit.json": ""}
    if fmt == "torchscript":
        model = torch.jit.load(model_path, _extra_files=files)
    elif fmt == "pt2":
        model = torch.export.load(model_path, extra_files=files).module()
    else:
        import onnxruntime
        session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        model = lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        files["mnist_lit.json"] = session.get_modelmeta().custom_metadata_map["mnist_lit.json"]
    outputs = [model(x).detach() for x in inputs]
    assert "mnist_lit" not in sys.modules and "lightning" not in sys.modules, "loaded more than torch"
    torch.save({"y": outputs, "meta": json.loads(files["mnist_lit.json"])}, out_path)
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_every_format_equals_the_checkpoint_outside_mnist_lit(name: str, tmp_path: Path):
    net = make_checkpoint(name, tmp_path / "model.ckpt")
    inputs = [torch.rand(batch, 1, 28, 28) for batch in (1, 7)]  # any N >= 1
    torch.save(inputs, tmp_path / "x.pt")
    with torch.no_grad():
        expected = [net(x).softmax(1) for x in inputs]
    for fmt in export.FORMATS:
        path = export.export(tmp_path / "model.ckpt", fmt)
        assert path.suffix == export.FORMATS[fmt]
        proc = subprocess.run([sys.executable, "-c", LOADER, fmt, str(path), str(tmp_path / "x.pt"),
                               str(tmp_path / "y.pt")], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)  # not the repo: mnist_lit is not importable by accident
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = torch.load(tmp_path / "y.pt")
        for got, want in zip(result["y"], expected):
            assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), (fmt, len(want))
        assert result["meta"]["tutorial"] == name and len(result["meta"]["classes"]) == 10
        assert result["meta"]["input"].startswith("float32 N x 1 x 28 x 28, pixels / 255 in [0, 1]")


def test_fashion_class_names_travel_with_the_model(tmp_path: Path):
    make_checkpoint("fashion_mlp", tmp_path / "model.ckpt")
    files = {"mnist_lit.json": ""}
    with model_files.quiet_torchscript():
        torch.jit.load(export.export(tmp_path / "model.ckpt"), _extra_files=files)
    assert json.loads(files["mnist_lit.json"])["classes"][9] == "Ankle boot"


def test_onnx_export_without_the_onnx_extras_says_how_to_get_them(tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch):
    make_checkpoint("softmax_regression", tmp_path / "model.ckpt")
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if `pip install 'mnist-lit[onnx]'` never ran
    assert run("export", str(tmp_path / "model.ckpt"), "--format", "onnx") == 1
    assert capsys.readouterr().err == "mnist_lit: error: ONNX export needs the onnx extras: pip install 'mnist-lit[onnx]'\n"
    assert not list(tmp_path.glob("*.onnx"))


def test_export_command_and_its_bad_input(tmp_path: Path, capsys):
    make_checkpoint("cnn", tmp_path / "model.ckpt")
    assert run("export", str(tmp_path / "model.ckpt"), "--format", "pt2", "--output", str(tmp_path / "m.pt2")) == 0
    assert (tmp_path / "m.pt2").is_file() and "wrote " in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a model")
    assert run("export", str(tmp_path / "notes.txt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt: not a readable checkpoint" in err
    assert run("export", str(tmp_path / "model.ckpt"), "--format", "tflite") == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_checkpoint_whose_weights_are_another_network(tmp_path: Path, capsys):
    make_checkpoint("cnn", tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    checkpoint["mnist_lit"]["tutorial"] = "dense512"  # says dense512, holds cnn weights
    torch.save(checkpoint, tmp_path / "mislabelled.ckpt")
    assert run("export", str(tmp_path / "mislabelled.ckpt")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mislabelled.ckpt: weights do not fit the dense512 network" in err
    assert not (tmp_path / "mislabelled.pt").exists()
