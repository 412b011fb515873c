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

from mnist_lit import atomic
from mnist_lit.errors import UserError
from mnist_lit.model_files import INPUT, META_NAME, OUTPUT, Probabilities, checkpoint_model, metadata, quiet_torchscript

FORMATS = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx"}


def _any_batch() -> dict[int, Any]:
    """Dimension 0 of the input is the batch, of any size N >= 1."""
    return {0: torch.export.Dim("batch", min=1, max=1 << 20)}


def export(checkpoint: str | Path, fmt: str = "torchscript", output: str | Path | None = None) -> Path:
    """Write `checkpoint`'s model in `fmt` to `output` (default: beside it), atomically."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    checkpoint = Path(checkpoint)
    output = Path(output) if output else checkpoint.with_suffix(FORMATS[fmt])
    net, meta = checkpoint_model(checkpoint)
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
