"""Checkpoint -> a model file that loads without mnist_lit or Lightning: TorchScript, torch.export, ONNX.

Contract of every exported model: input float32 N x 1 x 28 x 28 with pixels in [0, 1] (x / 255, as in
training), any N >= 1; output N x 10 class probabilities (softmax, like Keras `predict`). The class
names, data set and input scaling travel inside the file as JSON (`mnist_lit.json`).

    python -m mnist_lit export checkpoints/cnn/model.ckpt --format pt2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lit import __version__, atomic
from mnist_lit.errors import UserError

FORMATS = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
META_NAME = "mnist_lit.json"
INPUT = "float32 N x 1 x 28 x 28, pixels / 255 in [0, 1], light ink on black (MNIST style)"
OUTPUT = "float32 N x 10 class probabilities (softmax)"


def _any_batch() -> dict[int, Any]:
    """Dimension 0 of the input is the batch, of any size N >= 1."""
    return {0: torch.export.Dim("batch", min=1, max=1 << 20)}


class Probabilities(nn.Module):
    """The tutorial's network followed by softmax: what Keras' `predict` returns."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=1)


def load_checkpoint_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The plain network of a checkpoint, in eval mode, and its metadata (tutorial, classes...)."""
    from mnist_lit.models import TUTORIALS
    from mnist_lit.models.base import read_checkpoint

    checkpoint = read_checkpoint(path)
    meta = checkpoint["mnist_lit"]
    if meta.get("tutorial") not in TUTORIALS:
        raise UserError(f"{path}: unknown tutorial {meta.get('tutorial')!r}")
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    model = TUTORIALS[meta["tutorial"]](**hparams)
    try:
        model.net.load_state_dict(net_state(checkpoint["state_dict"]))
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the {meta['tutorial']} network ({str(e).splitlines()[0]})") from None
    return model.net.eval(), meta


def read_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript model file and the metadata inside it ({} when it has none)."""
    files = {META_NAME: ""}
    with quiet_torchscript():
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return model, json.loads(files[META_NAME]) if files[META_NAME] else {}


def read_weights(path: str | Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The tutorial a model file holds and its network's state_dict: a Keras `.keras` / `.h5` file, an
    mnist_lit `.ckpt`, or a TorchScript `.pt` written by `export`."""
    from mnist_lit.models.base import read_checkpoint

    path = Path(path)
    if path.suffix in (".keras", ".h5"):
        from mnist_lit.keras_import import read_keras, recognise, to_torch

        net = to_torch(read_keras(path))
        return recognise(path, net), net.state_dict()
    if path.suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        state, tutorial = checkpoint["state_dict"], checkpoint["mnist_lit"].get("tutorial")
    elif path.suffix == ".pt":
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        try:
            scripted, meta = read_torchscript(path)
        except Exception as e:  # not a zip, not TorchScript, truncated...
            raise UserError(f"{path}: not a readable TorchScript file ({e.__class__.__name__})") from None
        state, tutorial = scripted.state_dict(), meta.get("tutorial")  # Probabilities(net): keys net.*
    else:
        raise UserError(f"{path}: weights must be a .keras, .h5, .ckpt or .pt file")
    return tutorial, net_state(state)


def net_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain network's part of a Tutorial's (or an exported Probabilities') state_dict."""
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def metadata(meta: dict[str, Any]) -> dict[str, Any]:
    return {"tutorial": meta["tutorial"], "dataset": meta["dataset"], "classes": list(meta["classes"]),
            "input": INPUT, "output": OUTPUT, "mnist_lit_version": __version__}


@contextlib.contextmanager
def quiet_torchscript():
    """torch 2.14 marks TorchScript deprecated and warns on script, save and load: the README says it once."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, message=r"(?s).*(TorchScript|torch\.jit)")
        yield


def export(checkpoint: str | Path, fmt: str = "torchscript", output: str | Path | None = None) -> Path:
    """Write `checkpoint`'s model in `fmt` to `output` (default: beside it), atomically."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    output = Path(output) if output else checkpoint.with_suffix(FORMATS[fmt])
    net, meta = load_checkpoint_model(checkpoint)
    model = Probabilities(net).eval()
    info = json.dumps(metadata(meta))
    example = torch.rand(2, 1, 28, 28)
    if fmt == "torchscript":
        with quiet_torchscript():
            scripted = torch.jit.script(model)
            atomic.write_bytes_from(output, lambda f: torch.jit.save(scripted, f, _extra_files={META_NAME: info}))
    elif fmt == "pt2":
        program = torch.export.export(model, (example,), dynamic_shapes=(_any_batch(),))
        atomic.write_bytes_from(output, lambda f: torch.export.save(program, f, extra_files={META_NAME: info}))
    else:
        _export_onnx(model, example, info, output)
    return output


def _export_onnx(model: nn.Module, example: torch.Tensor, info: str, output: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx extras: pip install 'mnist-lit[onnx]'") from None
    with warnings.catch_warnings(), io.StringIO() as sink:
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(sink):  # the exporter reports its steps on stdout
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["pixels"],
                                        output_names=["probabilities"],
                                        dynamic_shapes=(_any_batch(),))
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_NAME, info
    onnx.checker.check_model(proto)
    atomic.write_bytes_from(output, lambda f: f.write(proto.SerializeToString()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit export",
                                     description="Export a checkpoint's model for use without mnist_lit or Lightning.")
    parser.add_argument("checkpoint", help="an mnist_lit checkpoint, e.g. checkpoints/cnn/model.ckpt")
    parser.add_argument("--format", choices=list(FORMATS), default="torchscript",
                        help="torchscript (.pt, torch.jit.load), pt2 (.pt2, torch.export.load) or onnx (.onnx)")
    parser.add_argument("--output", help="the file to write (default: the checkpoint's name with the format's suffix)")
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.format, args.output)
    print(f"wrote {path} ({args.format}): input {INPUT}; output {OUTPUT}")
    return 0
