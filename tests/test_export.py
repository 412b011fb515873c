"""Exported models equal the checkpoint model and load with nothing of mnist_lit or Lightning."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from mnist_lit import export, model_files
from mnist_lit.errors import UserError
from mnist_lit.models import TUTORIALS
from tests.helpers import TEST, fit, make_checkpoint, run, synthetic_split, write_idx_folder

LOADER = textwrap.dedent("""
    # python -c LOADER INPUTS OUT FORMAT MODEL [FORMAT MODEL...]: each model's outputs on each input batch
    import json, sys
    import torch
    inputs_path, out_path, *models = sys.argv[1:]
    inputs = torch.load(inputs_path)
    results = []
    for fmt, model_path in zip(models[::2], models[1::2]):
        files = {"mnist_lit.json": ""}
        if fmt == "torchscript":
            model = torch.jit.load(model_path, _extra_files=files)
        elif fmt == "pt2":
            model = torch.export.load(model_path, extra_files=files).module()
        elif fmt == "pte":
            from executorch.runtime import Runtime
            program = Runtime.get().load_program(model_path)
            forward = program.load_method("forward")
            model = lambda x: forward.execute([x])[0]
            files["mnist_lit.json"] = program.load_method("mnist_lit.json").execute([])[0]
        else:
            import onnxruntime
            session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
            model = lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
            files["mnist_lit.json"] = session.get_modelmeta().custom_metadata_map["mnist_lit.json"]
        results.append({"y": [model(x).detach() for x in inputs], "meta": json.loads(files["mnist_lit.json"])})
    assert "mnist_lit" not in sys.modules and "lightning" not in sys.modules, "loaded more than torch"
    torch.save(results, out_path)
""")


def outside_mnist_lit(models: list[tuple[str, Path]], inputs: list[torch.Tensor], tmp_path: Path) -> list[dict]:
    """Each (format, file)'s outputs on each input batch and its metadata, from one process that imports
    torch and the format's runtime only."""
    torch.save(inputs, tmp_path / "x.pt")
    args = [str(part) for fmt, path in models for part in (fmt, path)]
    proc = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "x.pt"), str(tmp_path / "y.pt"), *args],
                          capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # not the repo: mnist_lit is not importable by accident
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(tmp_path / "y.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_every_format_equals_the_checkpoint_outside_mnist_lit(name: str, tmp_path: Path):
    net = make_checkpoint(name, tmp_path / "model.ckpt")
    inputs = [torch.rand(batch, 1, 28, 28) for batch in (1, 7)]  # any N >= 1
    with torch.no_grad():
        expected = [net(x).softmax(1) for x in inputs]
    paths = {fmt: export.export(tmp_path / "model.ckpt", fmt) for fmt in export.FORMATS}
    assert all(path.suffix == export.FORMATS[fmt] for fmt, path in paths.items())
    for fmt, result in zip(paths, outside_mnist_lit(list(paths.items()), inputs, tmp_path)):
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
    assert err.count("\n") == 1 and "notes.txt: a text file (it starts 'not a model'), not a checkpoint" in err
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


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real short fit of the cnn on synthetic digits: its model.ckpt and the data folder it trained on."""
    root = tmp_path_factory.mktemp("fit")
    write_idx_folder(root / "data" / "MNIST" / "raw")
    assert fit("cnn", root / "data", root / "out", "--trainer.max_epochs", "8") == 0
    return root / "out" / "model.ckpt", root / "data"


@pytest.mark.slow
def test_pte_and_int8_run_outside_mnist_lit_as_the_checkpoint_does(fitted: tuple[Path, Path], tmp_path: Path,
                                                                     capsys):
    checkpoint, data_root = fitted
    images, labels = synthetic_split(TEST, seed=1)  # the test split the fit never trained on
    test = torch.from_numpy(images).float()[:, None] / 255
    inputs = [test, test[:1], torch.rand(model_files.PTE_MAX_BATCH, 1, 28, 28)]  # 1 to the stated bound
    reference, _ = model_files.load_model(checkpoint)
    expected = [reference(x) for x in inputs]
    models = [("pte", export.export(checkpoint, "pte", tmp_path / "model.pte")),
              ("pte", export.export(checkpoint, "pte", None, "int8", data_root)),
              ("onnx", export.export(checkpoint, "onnx", None, "int8", data_root))]
    assert [path.name for _, path in models] == ["model.pte", "model.int8.pte", "model.int8.onnx"]
    plain, *quantized = outside_mnist_lit(models, inputs, tmp_path)
    for got, want in zip(plain["y"], expected):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), len(want)
    assert plain["meta"]["tutorial"] == "cnn" and plain["meta"]["max_batch"] == model_files.PTE_MAX_BATCH
    assert "quantization" not in plain["meta"]
    accuracy = (expected[0].argmax(1) == torch.from_numpy(labels)).float().mean().item()
    assert accuracy > 0.9, "the short fit did not learn: nothing to compare int8 against"
    for (_, path), result in zip(models[1:], quantized):
        int8_accuracy = (result["y"][0].argmax(1) == torch.from_numpy(labels)).float().mean().item()
        assert int8_accuracy >= accuracy - 0.02, (path.name, int8_accuracy, accuracy)
        assert result["meta"]["quantization"].startswith("int8: static post-training, per-channel weights")
        assert result["y"][2].shape == (model_files.PTE_MAX_BATCH, 10)
    assert models[2][1].stat().st_size < models[0][1].stat().st_size / 2  # int8 weights, not float
    # classify and serve read them through load_model, which names what each one is
    for _, path in models[1:]:
        model, meta = model_files.load_model(path)
        assert meta["format"] in ("ExecuTorch (XNNPACK)", "ONNX") and meta["quantization"].startswith("int8")
        assert model(torch.cat([test] * 6)).shape == (6 * TEST, 10)  # over the bound: run in slices
    save_png = tmp_path / "digit.png"
    Image.fromarray(255 - images[0]).save(save_png)  # dark ink on paper, as a photo
    capsys.readouterr()
    assert run("classify", "--model", str(models[0][1]), str(save_png)) == 0
    assert capsys.readouterr().out.startswith(f"{save_png}: ")
    # a damaged .pte: cut short, as an interrupted copy leaves it
    cut = tmp_path / "cut.pte"
    cut.write_bytes(models[0][1].read_bytes()[:50_000])
    assert run("classify", "--model", str(cut), str(save_png)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cut.pte: cannot load the model (RuntimeError: File size is too small." in err


def test_quantize_asks_one_line_each(tmp_path: Path, capsys):
    make_checkpoint("tiny_mlp", tmp_path / "model.ckpt")
    for args, message in ((["--format", "pte", "--quantize", "int4"], "--quantize must be int8, got 'int4'"),
                          (["--format", "pt2", "--quantize", "int8"],
                           "--quantize int8: pt2 files are not quantized here; use --format onnx or pte"),
                          (["--quantize", "int8"],
                           "--quantize int8: torchscript files are not quantized here; use --format onnx or pte")):
        assert run("export", str(tmp_path / "model.ckpt"), *args) == 1
        assert capsys.readouterr().err == f"mnist_lit: error: {message}\n", args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt"]


def test_pte_without_the_edge_extra_names_it(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    make_checkpoint("softmax_regression", tmp_path / "model.ckpt")
    (tmp_path / "model.pte").write_bytes(b"\x1c\x00\x00\x00ET12" + bytes(200))  # a .pte's first bytes
    for name in ("executorch", "executorch.exir", "executorch.runtime", "torchao"):  # also when imported already
        monkeypatch.setitem(sys.modules, name, None)  # as if `pip install 'mnist-lit[edge]'` never ran
    assert run("export", str(tmp_path / "model.ckpt"), "--format", "pte", "--output", str(tmp_path / "new.pte")) == 1
    assert capsys.readouterr().err == ("mnist_lit: error: ExecuTorch export (--format pte) needs the edge extra: "
                                       "pip install 'mnist-lit[edge]'\n")
    assert not (tmp_path / "new.pte").exists()
    with pytest.raises(UserError, match=r"model.pte: reading an ExecuTorch .pte needs the edge extra: "
                                        r"pip install 'mnist-lit\[edge\]'$"):
        model_files.load_model(tmp_path / "model.pte")


@pytest.mark.parametrize("content", [b"", b"not a model\n", bytes(range(256)) * 20], ids=["empty", "text", "binary"])
def test_a_pte_that_is_no_executorch_program(content: bytes, tmp_path: Path):
    (tmp_path / "model.pte").write_bytes(content)  # binary: the runtime would abort the process on these
    with pytest.raises(UserError, match=r"model.pte: cannot load the model \(ValueError: not an ExecuTorch program\)$"):
        model_files.load_model(tmp_path / "model.pte")
