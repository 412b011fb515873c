"""Checkpoint -> a model file that loads without mnist_lit or Lightning: TorchScript, torch.export, ONNX,
ExecuTorch (phones and small boards), the last two also quantized to int8.

Contract of every exported model: input float32 N x 1 x 28 x 28 with pixels in [0, 1] (x / 255, as in
training), any N >= 1 (an ExecuTorch program: 1 to PTE_MAX_BATCH); output N x 10 class probabilities
(softmax, like Keras `predict`). The class names, data set and input scaling travel inside the file as JSON
(`mnist_lit.json`; in a `.pte`, a method of that name that returns it).

    python -m mnist_lit export checkpoints/cnn/model.ckpt --format pt2
    python -m mnist_lit export checkpoints/cnn/model.ckpt --format pte --quantize int8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnist_lit import atomic
from mnist_lit.errors import UserError
from mnist_lit.model_files import (EDGE_EXTRA, INPUT, META_NAME, OUTPUT, PTE_MAX_BATCH, Probabilities,
                                   checkpoint_model, metadata, quiet_torchscript)

FORMATS = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx", "pte": ".pte"}
QUANTIZED = ("onnx", "pte")  # the formats `--quantize int8` applies to
QUANTIZE = ("int8",)
# training images the int8 activation ranges are measured on, a fixed random draw; with these int8 cost every
# tutorial at most 0.08 points of test accuracy (docs/benchmarks.md#phones-and-edge-devices)
CALIBRATION_IMAGES = 1000


def _any_batch() -> dict[int, Any]:
    """Dimension 0 of the input is the batch, of any size N >= 1."""
    return {0: torch.export.Dim("batch", min=1, max=1 << 20)}


def export(checkpoint: str | Path, fmt: str = "torchscript", output: str | Path | None = None,
           quantize: str | None = None, data_dir: str | Path = "data") -> Path:
    """Write `checkpoint`'s model in `fmt` to `output` (default: beside it), atomically.

    `quantize="int8"` (onnx and pte): static post-training quantization, int8 weights per output channel
    and int8 activations whose ranges are measured on training images of the checkpoint's data set, found
    in `data_dir` as `fit` reads them.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if quantize is not None and quantize not in QUANTIZE:
        raise UserError(f"--quantize must be {' or '.join(QUANTIZE)}, got {quantize!r}")
    if quantize and fmt not in QUANTIZED:
        raise UserError(f"--quantize {quantize}: {fmt} files are not quantized here; "
                        f"use --format {' or '.join(QUANTIZED)}")
    if fmt == "pte":
        _need_executorch()  # before the checkpoint is read: the missing extra is the first thing to say
    checkpoint = Path(checkpoint)
    default = checkpoint.with_suffix(FORMATS[fmt])
    output = Path(output) if output else default.with_stem(f"{default.stem}.{quantize}") if quantize else default
    net, meta = checkpoint_model(checkpoint)
    model = Probabilities(net).eval()
    calibration = _calibration_images(meta["dataset"], Path(data_dir)) if quantize else None
    described = metadata(meta)
    if quantize:
        described["quantization"] = (f"{quantize}: static post-training, per-channel weights, calibrated on "
                                     f"{len(calibration)} {meta['dataset']} training images")
    if fmt == "pte":
        described["max_batch"] = PTE_MAX_BATCH
    info = json.dumps(described)
    example = torch.rand(2, 1, 28, 28)
    if fmt == "pte":
        _export_pte(model, info, output, calibration)
    elif fmt == "torchscript":
        with quiet_torchscript():
            scripted = torch.jit.script(model)
            atomic.write_bytes_from(output, lambda f: torch.jit.save(scripted, f, _extra_files={META_NAME: info}))
    elif fmt == "pt2":
        program = torch.export.export(model, (example,), dynamic_shapes=(_any_batch(),))
        atomic.write_bytes_from(output, lambda f: torch.export.save(program, f, extra_files={META_NAME: info}))
    else:
        _export_onnx(model, example, info, output, calibration)
    return output


def _calibration_images(dataset: str, data_dir: Path) -> torch.Tensor:
    """CALIBRATION_IMAGES training images (never test images), scaled to [0, 1] as the model sees them."""
    from mnist_lit import data

    images, _ = data.load_split(data_dir, "train", dataset)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:CALIBRATION_IMAGES]
    return images[pick].float() / 255


def _need_executorch() -> None:
    try:
        with _quiet_lowering():
            import executorch.exir  # noqa: F401
            import torchao  # noqa: F401
    except ImportError:
        raise UserError(f"ExecuTorch export (--format pte) needs the edge extra: pip install 'mnist-lit[{EDGE_EXTRA}]'") from None


@contextlib.contextmanager
def _quiet_lowering():
    """ExecuTorch and torchao warn about their own internals (experimental APIs, deprecated registrations)
    while they export: nothing a user can act on."""
    loggers = [logging.getLogger(name) for name in ("torch.utils._pytree", "torch._export", "torch.export")]
    levels = [log.level for log in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for log in loggers:
            log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def _export_pte(model: nn.Module, info: str, output: Path, calibration: torch.Tensor | None) -> None:
    """An ExecuTorch program whose layers run in the XNNPACK delegate, for 1 to PTE_MAX_BATCH images.

    The example batch is the bound itself: lowering to XNNPACK runs each convolution again on fake tensors
    of the example's shape, where torch's choice of CPU convolution kernel (batch < 16 or not) becomes a
    guard on the batch dimension. From a small example that guard caps the program at 15 images (memory is
    planned for the largest batch allowed); from one at the bound it raises only the lower end, which the
    runtime does not check, and every batch from 1 up runs (tests/test_export.py runs 1 and the bound).
    """
    with _quiet_lowering():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        batch = ({0: torch.export.Dim("batch", min=1, max=PTE_MAX_BATCH)},)
        example = (torch.rand(PTE_MAX_BATCH, 1, 28, 28),)
        if calibration is not None:
            model = _pt2e_int8(model, example, batch, calibration)
        program = torch.export.export(model, example, dynamic_shapes=batch)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={META_NAME: info})
        buffer = lowered.to_executorch().buffer
    atomic.write_bytes_from(output, lambda f: f.write(buffer))


def _pt2e_int8(model: nn.Module, example: tuple[torch.Tensor], batch: tuple, calibration: torch.Tensor) -> nn.Module:
    """PT2E static quantization for XNNPACK: int8 symmetric weights per output channel, int8 activations
    with ranges observed on `calibration` (softmax stays float)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(model, example, dynamic_shapes=batch).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    observed = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for images in calibration.split(PTE_MAX_BATCH):
            observed(images)
    return convert_pt2e(observed)


def _onnx_int8(plain: bytes, calibration: torch.Tensor, name: str) -> bytes:
    """onnxruntime's static quantization in QDQ form: int8 weights per output channel, int8 activations
    with ranges observed on `calibration`; the metadata is kept."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(256))

        def get_next(self) -> dict[str, Any] | None:
            images = next(self.batches, None)
            return None if images is None else {name: images.numpy()}

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a suggestion to run its pre-processing, for models larger than these
    try:
        with tempfile.TemporaryDirectory(prefix="mnist_lit-onnx-") as tmp:
            source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            source.write_bytes(plain)
            quantize_static(source, target, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
            return target.read_bytes()
    finally:
        root.setLevel(level)


def _export_onnx(model: nn.Module, example: torch.Tensor, info: str, output: Path,
                 calibration: torch.Tensor | None) -> None:
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
    serialized = proto.SerializeToString()
    if calibration is not None:
        serialized = _onnx_int8(serialized, calibration, "pixels")
    atomic.write_bytes_from(output, lambda f: f.write(serialized))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit export",
                                     description="Export a checkpoint's model for use without mnist_lit or Lightning.")
    parser.add_argument("checkpoint", help="an mnist_lit checkpoint, e.g. checkpoints/cnn/model.ckpt")
    parser.add_argument("--format", choices=list(FORMATS), default="torchscript",
                        help="torchscript (.pt, torch.jit.load), pt2 (.pt2, torch.export.load), onnx (.onnx) or "
                             f"pte (.pte, ExecuTorch with XNNPACK, batches of 1 to {PTE_MAX_BATCH}; needs the "
                             f"{EDGE_EXTRA} extra)")
    parser.add_argument("--quantize", metavar="int8",
                        help="int8 (onnx and pte): static post-training quantization, per-channel weights, "
                             f"calibrated on {CALIBRATION_IMAGES} training images; writes NAME.int8.onnx/.pte")
    parser.add_argument("--data-dir", default="data",
                        help="where --quantize finds the training images, as fit's --data.data_dir (default: data)")
    parser.add_argument("--output", help="the file to write (default: the checkpoint's name with the format's suffix)")
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.format, args.output, args.quantize, args.data_dir)
    kind = f"{args.format}, {args.quantize}" if args.quantize else args.format
    batches = f"N from 1 to {PTE_MAX_BATCH}" if args.format == "pte" else ""
    print(f"wrote {path} ({kind}): input {INPUT}{'; ' + batches if batches else ''}; output {OUTPUT}")
    return 0
