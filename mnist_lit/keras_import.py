"""A trained Keras model (`.keras`, or legacy `.h5`) -> the tutorial it is, as an mnist_lit checkpoint.

    python -m mnist_lit import-keras model.keras [--output DIR]

Reads the file with h5py, zipfile and json: neither TensorFlow nor Keras is needed. The model's own config
lists its layers; each becomes torch modules by the table below, and the result must equal one of the five
tutorials' networks, module for module (layer types, units, filters, kernel sizes, input shape; a ReLU
right after a MaxPool counts as right before it, as the two commute). Optimizer variables stored in the
file are ignored.

| Keras layer        | torch                    | weights                                                      |
| ------------------ | ------------------------ | ------------------------------------------------------------ |
| InputLayer         | (input shape only)       | 784 wide: a Flatten first, since mnist_lit feeds N x 1 x 28 x 28 |
| Dense              | Linear + activation      | kernel in x out -> weight out x in (transposed); bias as is  |
| Conv2D             | Conv2d + activation      | kernel kh x kw x in x out -> weight out x in x kh x kw       |
| MaxPooling2D       | MaxPool2d                | none                                                         |
| Flatten            | Flatten                  | the next Dense's input rows go from (h, w, c) to (c, h, w) order |
| Dropout            | Dropout (same rate)      | none                                                         |
| Activation, ReLU   | ReLU                     | none                                                         |

A softmax on the last layer is dropped: mnist_lit networks return logits, and softmax comes back in
`predict` and in every export. Writes `DIR/model.ckpt` and `DIR/model.pt` (and `metrics.json` with the
figures when the test images are at hand), so `test --ckpt_path`, `export`, `classify` and `report` take
them as they take a `fit`'s.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnist_lit.errors import UserError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


@dataclass
class KerasModel:
    """What a Keras model file holds that matters here: its layer configs and each layer's arrays."""

    path: Path
    layers: list[dict[str, Any]]  # {"class_name": ..., "config": {...}}, in order
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # layer name -> [kernel, bias]


# ---------------------------------------------------------------- reading the file


def read_keras(path: str | Path) -> KerasModel:
    """Read a Keras 3 `.keras` zip or a legacy `.h5` file, or say in one line why it is neither."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        if head == HDF5_MAGIC:
            return _read_legacy_h5(path)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:  # truncated or inconsistent inside
        raise UserError(f"{path}: damaged Keras file ({e.__class__.__name__}: {str(e).splitlines()[0][:120]})") from None
    raise UserError(f"{path}: not a Keras model file (neither a .keras zip nor an HDF5 .h5 file)")


def _layers_of(path: Path, config: Any) -> list[dict[str, Any]]:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) \
            or not isinstance(config["config"].get("layers"), list):
        raise UserError(f"{path}: the model config has no list of layers (a subclassed model cannot be read)")
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise UserError(f"{path}: a {config.get('class_name')} model; only Sequential and Functional models can be read")
    return config["config"]["layers"]


def _read_zip(path: Path) -> KerasModel:
    import h5py

    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if not {"config.json", "model.weights.h5"} <= names:
            raise UserError(f"{path}: a zip file, but not a Keras model (no config.json and model.weights.h5 in it)")
        try:
            config = json.loads(z.read("config.json"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: config.json is not valid JSON ({e.msg})") from None
        weights_file = io.BytesIO(z.read("model.weights.h5"))
    model = KerasModel(path, _layers_of(path, config))
    with h5py.File(weights_file, "r") as h5:
        layers = h5.get("layers")
        for group in (layers.values() if layers is not None else []):
            variables = group.get("vars")
            if variables is None:
                continue
            # the group's own key is a generic attribute name; the layer's config name is on "vars"
            name = variables.attrs.get("name", group.name.rsplit("/", 1)[-1])
            name = name.decode() if isinstance(name, bytes) else str(name)
            model.weights[name] = [variables[str(i)][()] for i in range(len(variables))]
    return model


def _read_legacy_h5(path: Path) -> KerasModel:
    import h5py

    with h5py.File(path, "r") as h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise UserError(f"{path}: an HDF5 file with no model config (a save_weights file? save the whole "
                            "model with model.save)")
        try:
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: its model config is not valid JSON ({e.msg})") from None
        model = KerasModel(path, _layers_of(path, config))
        group = h5["model_weights"] if "model_weights" in h5 else h5
        for name in group.attrs.get("layer_names", []):
            name = name.decode() if isinstance(name, bytes) else str(name)
            layer = group[name]
            weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in layer.attrs.get("weight_names", [])]
            if weight_names:
                model.weights[name] = [layer[w][()] for w in weight_names]
    return model


# ---------------------------------------------------------------- Keras layers -> torch modules


def kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """A Keras Dense (in x out) or Conv2D (kh x kw x in x out) kernel in torch's layout."""
    t = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
    return t.T.contiguous() if t.dim() == 2 else t.permute(3, 2, 0, 1).contiguous()


def flatten_rows_to_torch(kernel: np.ndarray, feature_map: tuple[int, int, int]) -> np.ndarray:
    """The kernel of a Dense after Flatten: Keras flattens (h, w, c), torch (c, h, w); reorder its rows."""
    c, h, w = feature_map
    return kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)


def _activation(path: Path, name: str, activation: Any, last: bool) -> list[nn.Module]:
    if activation in (None, "linear"):
        return []
    if activation == "relu":
        return [nn.ReLU()]
    if activation == "softmax" and last:
        return []  # logits out; softmax is applied by the loss, `predict` and the exports
    raise UserError(f"{path}: layer {name} has activation {activation!r}; the tutorials use relu (and softmax last)")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _input_shape(model: KerasModel) -> tuple[int, ...]:
    for layer in model.layers:
        config = layer.get("config", {})
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape:
            return tuple(shape[1:])
    build = model.layers[0].get("build_config", {}) if model.layers else {}
    if build.get("input_shape"):
        return tuple(build["input_shape"][1:])
    raise UserError(f"{model.path}: the model config gives no input shape")


def _arrays(model: KerasModel, name: str, kind: str, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
    arrays = model.weights.get(name)
    what = ", ".join(("kernel", "bias")[: len(expected)])
    if not arrays:
        raise UserError(f"{model.path}: layer {name} ({kind}) has no weights in the file")
    if len(arrays) != len(expected):
        raise UserError(f"{model.path}: layer {name} ({kind}) has {len(arrays)} weight arrays, expected {len(expected)} ({what})")
    for label, array, shape in zip(("kernel", "bias"), arrays, expected):
        if tuple(array.shape) != shape:
            raise UserError(f"{model.path}: layer {name} ({kind}): {label} has shape {tuple(array.shape)}, expected {shape}")
    return [np.asarray(a, dtype=np.float32) for a in arrays]


def _shape_after(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape)).shape[1:])


def to_torch(model: KerasModel) -> nn.Sequential:
    """The Keras layers as a torch network taking N x 1 x 28 x 28, with the file's weights in it."""
    shape = _input_shape(model)  # without the batch axis, channels-last as in Keras
    modules: list[nn.Module] = []
    if shape in ((784,), (28, 28), (28, 28, 1)):
        if shape == (784,):
            modules.append(nn.Flatten())
        current: tuple[int, ...] = (784,) if shape == (784,) else (1, 28, 28)  # torch layout
    else:
        raise UserError(f"{model.path}: input shape {shape}; the tutorials take 28 x 28 images (784, 28x28 or 28x28x1)")
    flattened: tuple[int, int, int] | None = None  # the feature map a Flatten just turned into a vector
    body = [layer for layer in model.layers if layer.get("class_name") != "InputLayer"]
    for i, layer in enumerate(body):
        kind, config = layer.get("class_name"), layer.get("config", {})
        name = config.get("name", f"#{i}")
        last = i == len(body) - 1
        if kind == "Dense":
            if len(current) != 1:
                raise UserError(f"{model.path}: layer {name} (Dense) gets a {len(current)}-d input; add a Flatten before it")
            units, bias = int(config["units"]), bool(config.get("use_bias", True))
            arrays = _arrays(model, name, f"Dense {units}", [(current[0], units), (units,)][: 1 + bias])
            kernel = arrays[0] if flattened is None else flatten_rows_to_torch(arrays[0], flattened)
            linear = nn.Linear(current[0], units, bias=bias)
            with torch.no_grad():
                linear.weight.copy_(kernel_to_torch(kernel))
                if bias:
                    linear.bias.copy_(torch.from_numpy(arrays[1]))
            modules += [linear, *_activation(model.path, name, config.get("activation"), last)]
            current, flattened = (units,), None
        elif kind == "Conv2D":
            if config.get("data_format", "channels_last") != "channels_last" or _pair(config.get("dilation_rate", 1)) != (1, 1) \
                    or config.get("groups", 1) != 1 or config.get("padding", "valid") not in ("valid", "same") \
                    or len(current) != 3:
                raise UserError(f"{model.path}: layer {name} (Conv2D) is not a plain channels-last 2-d convolution")
            filters, size = int(config["filters"]), _pair(config["kernel_size"])
            stride, bias = _pair(config.get("strides", 1)), bool(config.get("use_bias", True))
            if config.get("padding") == "same" and stride != (1, 1):
                raise UserError(f"{model.path}: layer {name} (Conv2D) has 'same' padding with strides {stride}")
            arrays = _arrays(model, name, f"Conv2D {filters}", [(*size, current[0], filters), (filters,)][: 1 + bias])
            conv = nn.Conv2d(current[0], filters, size, stride=stride, padding=config.get("padding", "valid"), bias=bias)
            with torch.no_grad():
                conv.weight.copy_(kernel_to_torch(arrays[0]))
                if bias:
                    conv.bias.copy_(torch.from_numpy(arrays[1]))
            modules += [conv, *_activation(model.path, name, config.get("activation"), last)]
            current = _shape_after(conv, current)
        elif kind == "MaxPooling2D":
            size = _pair(config.get("pool_size", 2))
            stride = _pair(config.get("strides") or size)
            if config.get("padding", "valid") != "valid" or len(current) != 3:
                raise UserError(f"{model.path}: layer {name} (MaxPooling2D) is not a 'valid' 2-d pooling")
            modules.append(nn.MaxPool2d(size, stride))
            current = _shape_after(modules[-1], current)
        elif kind == "Flatten":
            flattened = current if len(current) == 3 and current[1] * current[2] > 1 else None
            modules.append(nn.Flatten())
            current = (int(np.prod(current)),)
        elif kind == "Dropout":
            modules.append(nn.Dropout(float(config.get("rate", 0.0))))
        elif kind in ("Activation", "ReLU"):
            modules += _activation(model.path, name, config.get("activation", "relu"), last)
        else:
            raise UserError(f"{model.path}: layer {name} is a {kind}, which none of the tutorials has")
    return nn.Sequential(*modules)


# ---------------------------------------------------------------- which tutorial


def describe(module: nn.Module) -> str:
    """A module in Keras' words, e.g. `Dense 512`, `Conv2D 32 3x3`: what recognition compares."""
    if isinstance(module, nn.Linear):
        return f"Dense {module.out_features}" + ("" if module.bias is not None else " (no bias)")
    if isinstance(module, nn.Conv2d):
        extra = "" if module.stride == (1, 1) and module.padding in ("valid", (0, 0)) else f" stride {module.stride} padding {module.padding}"
        return f"Conv2D {module.out_channels} {module.kernel_size[0]}x{module.kernel_size[1]}" + extra + ("" if module.bias is not None else " (no bias)")
    if isinstance(module, nn.MaxPool2d):
        k = _pair(module.kernel_size)
        return f"MaxPooling2D {k[0]}x{k[1]}" + ("" if _pair(module.stride) == k else f" stride {module.stride}")
    return {nn.ReLU: "relu", nn.Flatten: "Flatten", nn.Dropout: "Dropout"}.get(type(module), type(module).__name__)


def keras_order(layout: list[str]) -> list[str]:
    """A layout as Keras lists the tutorials: a ReLU that follows a MaxPool (the cnn pools first, which
    computes the same) goes back before it, next to its convolution."""
    layout = list(layout)
    for i in range(len(layout) - 1):
        if layout[i].startswith("MaxPooling2D") and layout[i + 1] == "relu":
            layout[i], layout[i + 1] = layout[i + 1], layout[i]
    return layout


def recognise(path: Path, net: nn.Sequential) -> str:
    """The tutorial whose network has the same modules in the same order, or a one-line error."""
    from mnist_lit.models import TUTORIALS

    found = keras_order([describe(m) for m in net])  # a file that pools before its ReLU is the same network
    layouts = {name: keras_order([describe(m) for m in cls().net]) for name, cls in TUTORIALS.items()}
    for name, layout in layouts.items():
        if layout == found:
            return name

    def shared(name: str) -> int:
        layout = layouts[name]
        return next((i for i, (a, b) in enumerate(zip(layout, found)) if a != b), min(len(layout), len(found)))

    closest = max(layouts, key=lambda n: (shared(n), -abs(len(layouts[n]) - len(found))))
    i, layout = shared(closest), layouts[closest]
    if i < len(layout) and i < len(found):
        where = f"{closest} has {layout[i]} where the file has {found[i]}"
    elif i < len(layout):
        where = f"the file ends where {closest} goes on with {layout[i]}"
    else:
        where = f"the file goes on with {found[i]} where {closest} ends"
    raise UserError(f"{path}: not one of the tutorials' networks: {where} (the file's layers: {', '.join(found)})")


def load_keras(path: str | Path, dataset: str | None = None):
    """The tutorial model (an mnist_lit `Tutorial`) that a Keras file holds, with the file's weights."""
    from mnist_lit.models import TUTORIALS

    path = Path(path)
    net = to_torch(read_keras(path))
    name = recognise(path, net)
    kwargs: dict[str, Any] = {"dataset": dataset} if dataset else {}
    rates = [m.p for m in net if isinstance(m, nn.Dropout)]
    if rates:
        kwargs["dropout"] = rates[0]  # tiny_mlp's one Dropout: a hyperparameter, not part of recognition
    model = TUTORIALS[name](**kwargs)
    model.net.load_state_dict(net.state_dict())
    return model


# ---------------------------------------------------------------- outputs


def checkpoint_of(model, source: Path) -> dict[str, Any]:
    """The checkpoint `fit` would have written for these weights: what `test --ckpt_path`, `export`,
    `classify` and `report` read (the model class for Lightning's CLI, plain values only)."""
    import lightning as L

    from mnist_lit.models import count_params

    hparams = {"_class_path": f"mnist_lit.models.{type(model).__name__}", **model.hparams,
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    return {
        "epoch": 0, "global_step": 0, "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "hparams_name": "kwargs", "hyper_parameters": hparams,
        "mnist_lit": {"tutorial": model.name, "dataset": model.hparams.dataset, "classes": list(model.classes),
                      "params": count_params(model.net), "imported_from": source.name},
    }


def evaluate(model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Keras' `evaluate` on the test set: loss, accuracy, per-class accuracy and the confusion matrix."""
    from mnist_lit.report import predict_probs

    probs = predict_probs(model.net, images)
    loss = float(-probs.gather(1, labels.view(-1, 1).long()).clamp(min=1e-12).log().mean())
    predicted = probs.argmax(1)
    cm = torch.zeros(10, 10, dtype=torch.long)
    cm.index_put_((labels.long(), predicted), torch.ones_like(predicted), accumulate=True)
    per_class = (cm.diag() / cm.sum(1).clamp(min=1)).tolist()
    return {"test_acc": float((predicted == labels).float().mean()), "test_loss": loss, "test_samples": len(labels),
            "per_class_acc": dict(zip(model.classes, per_class)), "confusion_matrix": cm.tolist()}


def import_keras(source: str | Path, output: str | Path | None = None, dataset: str | None = None,
                 data_dir: str = "data") -> Path:
    """Write `model.ckpt`, `model.pt` and, with the test images at hand, `metrics.json` and the figures."""
    from mnist_lit import atomic, export, report
    from mnist_lit.data import load_split, locate
    from mnist_lit.models import count_params

    source = Path(source)
    model = load_keras(source, dataset)  # every check happens here, before anything is written
    out = Path(output) if output else Path("checkpoints") / f"{model.name}_keras"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    print(f"{source}: the {model.name} tutorial ({count_params(model.net):,} parameters, "
          f"{model.hparams.dataset} classes)", flush=True)
    atomic.write_bytes_from(out / "model.ckpt", lambda f: torch.save(checkpoint_of(model, source), f))
    scripted = export.export(out / "model.ckpt", "torchscript", out / "model.pt")
    print(f"Saved {out / 'model.ckpt'} and {scripted} (TorchScript)", flush=True)
    try:
        source = locate(model.hparams.dataset, data_dir, allow_download=False, say=lambda line: print(line, flush=True))
        images, labels = load_split(source, "test", model.hparams.dataset)
    except UserError as e:
        print(f"Test accuracy not measured: {e}", flush=True)
        return out
    metrics = {"tutorial": model.name, "dataset": model.hparams.dataset, "imported_from": str(source),
               **evaluate(model, images, labels), "params": count_params(model.net), "epochs": 0, "history": []}
    print(f"Test: loss: {metrics['test_loss']:.4f} - acc: {metrics['test_acc']:.4f}", flush=True)
    atomic.write_json(out / "metrics.json", metrics)
    figures = report.write_report(out, model.net, images, labels)
    print("Figures: " + ", ".join(str(p) for p in figures), flush=True)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit import-keras",
                                     description="Bring a trained Keras model of one of the tutorials over to mnist_lit.")
    parser.add_argument("model", help="a Keras 3 .keras file or a legacy .h5 file (model.save)")
    parser.add_argument("--output", help="folder to write (default: checkpoints/<tutorial>_keras)")
    parser.add_argument("--dataset", choices=["mnist", "fashion_mnist"],
                        help="the data the model was trained on (default: the tutorial's)")
    parser.add_argument("--data_dir", default="data", help="where to look for the test images first")
    args = parser.parse_args(argv)
    import_keras(args.model, args.output, args.dataset, args.data_dir)
    return 0
