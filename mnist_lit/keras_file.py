"""A Keras model file (`.keras`, or legacy `.h5`) read without TensorFlow or Keras, as a torch network.

`read_keras` takes the model's own config (its list of layers) and each layer's arrays, with h5py,
zipfile and json. `to_torch` turns the layers into torch modules through `CONVERTERS`, one function per
Keras layer type, each doing its weight-layout change. `recognise` names the tutorial whose network
the result is, module for module (layer types, units, filters, kernel sizes, input shape); optimizer
variables in the file are ignored.

A softmax on the last layer is dropped: mnist_lit networks return logits, and softmax comes back in
`predict` and in every export.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mnist_lit.errors import UserError, described
from mnist_lit.models import TUTORIALS

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# The tutorials' weights are at most 1.6 MB (dense512's), and a .keras file of one at most a few MB. A
# file may declare far more than it holds (a zip member that inflates to gigabytes, an HDF5 dataset of a
# terabyte with nothing stored): sizes over these are refused before anything is read.
MAX_WEIGHT_BYTES = 64 << 20
MAX_CONFIG_BYTES = 4 << 20


@dataclass
class KerasModel:
    """What a Keras model file holds that matters here: its layer configs and each layer's arrays."""

    path: Path
    layers: list[dict[str, Any]]  # {"class_name": ..., "config": {...}}, in order
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)  # layer name -> [kernel, bias]


# ---------------------------------------------------------------- reading the file


READ_SECONDS = 60  # far more than any tutorial's file takes (milliseconds)
ISOLATE = True  # read in a child process (see read_keras); coverage-guided fuzzing reads in its own


def read_keras(path: str | Path) -> KerasModel:
    """Read a Keras 3 `.keras` zip or a legacy `.h5` file, or say in one line why it is neither.

    The HDF5 library reads in a process of its own (forked): on some damaged files it loops without end
    inside C code, where no signal or timeout of Python's reaches it (found by fuzzing, HDF5 2.0.0), so
    the child is killed after READ_SECONDS instead."""
    import multiprocessing

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    if not ISOLATE:
        return _read(path)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_read_into, args=(path, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(READ_SECONDS):
            raise UserError(f"{path}: damaged Keras file (reading it took over {READ_SECONDS} s)")
        kind, value = receive.recv()
    except EOFError:  # the child died (the kernel's OOM killer, a crash inside HDF5)
        raise UserError(f"{path}: damaged Keras file (the reader stopped: exit status {child.exitcode})") from None
    finally:
        child.kill()
        child.join()
    if kind == "error":
        raise value
    return value


def _read_into(path: Path, send) -> None:
    try:
        send.send(("model", _read(path)))
    except UserError as e:
        send.send(("error", e))


def _read(path: Path) -> KerasModel:
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if zipfile.is_zipfile(path):
            return _read_zip(path)
        if head == HDF5_MAGIC:
            return _read_legacy_h5(path)
    except (OSError, KeyError, ValueError, RuntimeError, zipfile.BadZipFile, zlib.error) as e:  # truncated or inconsistent
        # inside (h5py raises RuntimeError for some damaged HDF5 structures, zipfile zlib.error for a damaged member)
        raise UserError(f"{path}: damaged Keras file ({described(e)})") from None
    raise UserError(f"{path}: not a Keras model file (neither a .keras zip nor an HDF5 .h5 file)")


def _layers_of(path: Path, config: Any) -> list[dict[str, Any]]:
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict) \
            or not isinstance(config["config"].get("layers"), list):
        raise UserError(f"{path}: the model config has no list of layers (a subclassed model cannot be read)")
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise UserError(f"{path}: a {shown(config.get('class_name'))} model; only Sequential and Functional models can be read")
    layers = config["config"]["layers"]
    if not all(isinstance(layer, dict) and isinstance(layer.get("config", {}), dict) for layer in layers):
        raise UserError(f"{path}: the model config's layers are not each a class name and a config")
    return layers


def shown(value: Any) -> str:
    """A value from the file as one short printable line, for messages."""
    text = value if isinstance(value, str) and value.isprintable() else ascii(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_zip(path: Path) -> KerasModel:
    import h5py

    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        if not {"config.json", "model.weights.h5"} <= names:
            raise UserError(f"{path}: a zip file, but not a Keras model (no config.json and model.weights.h5 in it)")
        for name, limit in (("config.json", MAX_CONFIG_BYTES), ("model.weights.h5", MAX_WEIGHT_BYTES + MAX_CONFIG_BYTES)):
            if z.getinfo(name).file_size > limit:
                raise UserError(f"{path}: {name} inflates to {z.getinfo(name).file_size:,} bytes, more than a "
                                f"tutorial's model ({limit:,} at most)")
        config = _json(path, "config.json", z.read("config.json"))
        weights_file = io.BytesIO(z.read("model.weights.h5"))
    model = KerasModel(path, _layers_of(path, config))
    with h5py.File(weights_file, "r") as h5:
        layers = h5.get("layers")
        for group in (layers.values() if isinstance(layers, h5py.Group) else []):
            variables = group.get("vars") if isinstance(group, h5py.Group) else None
            if not isinstance(variables, h5py.Group):
                continue
            # the group's own key is a generic attribute name; the layer's config name is on "vars"
            name = _text(variables.attrs.get("name", group.name.rsplit("/", 1)[-1]))
            model.weights[name] = _arrays(model, [variables.get(str(i)) for i in range(len(variables))])
    return model


def _json(path: Path, what: str, text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: {what} is not valid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{path}: {what} is nested too deeply to be a model config") from None


def _arrays(model: KerasModel, items: list[Any]) -> list[np.ndarray]:
    """The values of a layer's HDF5 datasets, each size checked before it is read (see MAX_WEIGHT_BYTES)."""
    import h5py

    total = sum(a.nbytes for arrays in model.weights.values() for a in arrays)
    values = []
    for item in items:
        if not isinstance(item, h5py.Dataset):
            what = "a weight it names is missing" if item is None else f"weight {item.name} is not an array"
            raise UserError(f"{model.path}: {what}")
        total += math.prod(item.shape or ()) * item.dtype.itemsize
        if total > MAX_WEIGHT_BYTES:
            raise UserError(f"{model.path}: weight {item.name} of shape {item.shape} takes the file's weights over "
                            f"{MAX_WEIGHT_BYTES >> 20} MB; no tutorial's network is that large")
        values.append(item[()])
    return values


def _read_legacy_h5(path: Path) -> KerasModel:
    import h5py

    with h5py.File(path, "r") as h5:
        raw = h5.attrs.get("model_config")
        if raw is None:
            raise UserError(f"{path}: an HDF5 file with no model config (a save_weights file? save the whole "
                            "model with model.save)")
        config = _json(path, "its model config", _text(raw))
        model = KerasModel(path, _layers_of(path, config))
        group = h5["model_weights"] if "model_weights" in h5 else h5
        for name in map(_text, group.attrs.get("layer_names", [])):
            layer = group[name]
            weight_names = [_text(w) for w in layer.attrs.get("weight_names", [])]
            if weight_names:
                model.weights[name] = _arrays(model, [layer.get(w) for w in weight_names])
    return model


# ---------------------------------------------------------------- Keras layers -> torch modules


@dataclass
class Walk:
    """Where the conversion is: the file, the torch shape of the current activation (no batch axis), and
    the feature map a Flatten just turned into a vector (its Dense's rows are reordered)."""

    model: KerasModel
    shape: tuple[int, ...]
    flattened: tuple[int, int, int] | None = None

    def arrays(self, name: str, kind: str, expected: list[tuple[int, ...]]) -> list[np.ndarray]:
        """The layer's kernel (and bias) from the file, checked against the shapes the layer implies."""
        arrays = self.model.weights.get(name)
        what = ", ".join(("kernel", "bias")[: len(expected)])
        if not arrays:
            raise UserError(f"{self.model.path}: layer {name} ({kind}) has no weights in the file")
        if len(arrays) != len(expected):
            raise UserError(f"{self.model.path}: layer {name} ({kind}) has {len(arrays)} weight arrays, "
                            f"expected {len(expected)} ({what})")
        for label, array, shape in zip(("kernel", "bias"), arrays, expected):
            if tuple(array.shape) != shape:
                raise UserError(f"{self.model.path}: layer {name} ({kind}): {label} has shape "
                                f"{tuple(array.shape)}, expected {shape}")
        return [np.asarray(a, dtype=np.float32) for a in arrays]

    def refuse(self, name: str, why: str) -> UserError:
        return UserError(f"{self.model.path}: layer {name} {why}")


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _shape_after(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(module(torch.zeros(1, *shape)).shape[1:])


def kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """A Keras Dense (in x out) or Conv2D (kh x kw x in x out) kernel in torch's layout."""
    t = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32))
    return t.T.contiguous() if t.dim() == 2 else t.permute(3, 2, 0, 1).contiguous()


def _copy_in(layer: nn.Linear | nn.Conv2d, kernel: np.ndarray, bias: list[np.ndarray]) -> None:
    with torch.no_grad():
        layer.weight.copy_(kernel_to_torch(kernel))
        if bias:
            layer.bias.copy_(torch.from_numpy(bias[0]))


def _activation(walk: Walk, name: str, activation: Any, last: bool) -> list[nn.Module]:
    if activation in (None, "linear"):
        return []
    if activation == "relu":
        return [nn.ReLU()]
    if activation == "softmax" and last:
        return []  # logits out; softmax is applied by the loss, `predict` and the exports
    raise walk.refuse(name, f"has activation {activation!r}; the tutorials use relu (and softmax last)")


def dense(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """Keras kernel in x out -> torch weight out x in (transposed); bias as is. After a Flatten of a
    feature map, the kernel's rows go from Keras' (h, w, c) order to torch's (c, h, w) first."""
    if len(walk.shape) != 1:
        raise walk.refuse(name, f"(Dense) gets a {len(walk.shape)}-d input; add a Flatten before it")
    units, bias = int(config["units"]), bool(config.get("use_bias", True))
    kernel, *biases = walk.arrays(name, f"Dense {units}", [(walk.shape[0], units), (units,)][: 1 + bias])
    if walk.flattened is not None:
        c, h, w = walk.flattened
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
    linear = nn.Linear(walk.shape[0], units, bias=bias)
    _copy_in(linear, kernel, biases)
    walk.shape, walk.flattened = (units,), None
    return [linear, *_activation(walk, name, config.get("activation"), last)]


def conv2d(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """Keras kernel kh x kw x in x out -> torch weight out x in x kh x kw; bias as is."""
    if config.get("data_format", "channels_last") != "channels_last" or _pair(config.get("dilation_rate", 1)) != (1, 1) \
            or config.get("groups", 1) != 1 or config.get("padding", "valid") not in ("valid", "same") \
            or len(walk.shape) != 3:
        raise walk.refuse(name, "(Conv2D) is not a plain channels-last 2-d convolution")
    filters, size = int(config["filters"]), _pair(config["kernel_size"])
    stride, bias = _pair(config.get("strides", 1)), bool(config.get("use_bias", True))
    if config.get("padding") == "same" and stride != (1, 1):
        raise walk.refuse(name, f"(Conv2D) has 'same' padding with strides {stride}")
    kernel, *biases = walk.arrays(name, f"Conv2D {filters}", [(*size, walk.shape[0], filters), (filters,)][: 1 + bias])
    conv = nn.Conv2d(walk.shape[0], filters, size, stride=stride, padding=config.get("padding", "valid"), bias=bias)
    _copy_in(conv, kernel, biases)
    walk.shape = _shape_after(conv, walk.shape)
    return [conv, *_activation(walk, name, config.get("activation"), last)]


def max_pooling2d(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """No weights."""
    size = _pair(config.get("pool_size", 2))
    if config.get("padding", "valid") != "valid" or len(walk.shape) != 3:
        raise walk.refuse(name, "(MaxPooling2D) is not a 'valid' 2-d pooling")
    pool = nn.MaxPool2d(size, _pair(config.get("strides") or size))
    walk.shape = _shape_after(pool, walk.shape)
    return [pool]


def flatten(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """No weights; remembers a feature map larger than 1x1, whose order the next Dense's rows follow."""
    walk.flattened = walk.shape if len(walk.shape) == 3 and walk.shape[1] * walk.shape[2] > 1 else None
    walk.shape = (int(np.prod(walk.shape)),)
    return [nn.Flatten()]


def dropout(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """No weights; the same rate."""
    return [nn.Dropout(float(config.get("rate", 0.0)))]


def activation(walk: Walk, name: str, config: dict[str, Any], last: bool) -> list[nn.Module]:
    """No weights."""
    return _activation(walk, name, config.get("activation", "relu"), last)


Converter = Callable[[Walk, str, dict[str, Any], bool], list[nn.Module]]
CONVERTERS: dict[str, Converter] = {"Dense": dense, "Conv2D": conv2d, "MaxPooling2D": max_pooling2d,
                                    "Flatten": flatten, "Dropout": dropout, "Activation": activation,
                                    "ReLU": activation}


def _input_shape(model: KerasModel) -> tuple[int, ...]:
    shapes = [layer.get("config", {}).get(key) for layer in model.layers for key in ("batch_shape", "batch_input_shape")]
    build = model.layers[0].get("build_config") if model.layers else None
    shapes.append(build.get("input_shape") if isinstance(build, dict) else None)
    shape = next((s for s in shapes if s), None)
    if shape is None:
        raise UserError(f"{model.path}: the model config gives no input shape")
    if not isinstance(shape, list):
        raise UserError(f"{model.path}: the model config's input shape {shown(shape)} is not a list")
    return tuple(shape[1:])


def to_torch(model: KerasModel) -> nn.Sequential:
    """The Keras layers as a torch network taking N x 1 x 28 x 28, with the file's weights in it.

    An InputLayer gives only the input shape; a 784-wide input gets a Flatten first, since mnist_lit
    feeds N x 1 x 28 x 28."""
    shape = _input_shape(model)  # without the batch axis, channels-last as in Keras
    if shape not in ((784,), (28, 28), (28, 28, 1)):
        raise UserError(f"{model.path}: input shape {shape}; the tutorials take 28 x 28 images (784, 28x28 or 28x28x1)")
    walk = Walk(model, (784,) if shape == (784,) else (1, 28, 28))  # torch layout
    modules: list[nn.Module] = [nn.Flatten()] if shape == (784,) else []
    body = [layer for layer in model.layers if layer.get("class_name") != "InputLayer"]
    for i, layer in enumerate(body):
        kind, config = layer.get("class_name"), layer.get("config", {})
        name = config.get("name", f"#{i}")
        name = name if isinstance(name, str) and name.isprintable() else shown(name)
        if not isinstance(kind, str) or kind not in CONVERTERS:
            raise walk.refuse(name, f"is a {shown(kind)}, which none of the tutorials has")
        try:
            modules += CONVERTERS[kind](walk, name, config, i == len(body) - 1)
        except (KeyError, TypeError, ValueError, OverflowError, RuntimeError) as e:  # a value missing or of no use
            raise walk.refuse(name, f"({kind}) has a config this cannot use ({described(e)})") from None
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
    """A layout as Keras lists the tutorials: a ReLU that follows a MaxPool (files written by earlier
    mnist_lit releases, whose cnn pooled first; the two compute the same) goes back before it."""
    layout = list(layout)
    for i in range(len(layout) - 1):
        if layout[i].startswith("MaxPooling2D") and layout[i + 1] == "relu":
            layout[i], layout[i + 1] = layout[i + 1], layout[i]
    return layout


def recognise(path: Path, net: nn.Sequential) -> str:
    """The tutorial whose network has the same modules in the same order, or a one-line error."""
    found = keras_order([describe(m) for m in net])
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


def tutorial_of(path: str | Path, dataset: str | None = None, build: Callable[..., Any] | None = None):
    """The tutorial model (an mnist_lit `Tutorial`) that a Keras file holds, with the file's weights;
    `build(cls, **init_args)` makes it (default: `cls(**init_args)`)."""
    path = Path(path)
    net = to_torch(read_keras(path))
    name = recognise(path, net)
    kwargs: dict[str, Any] = {"dataset": dataset} if dataset else {}
    rates = [m.p for m in net if isinstance(m, nn.Dropout)]
    if rates:
        kwargs["dropout"] = rates[0]  # tiny_mlp's one Dropout: a hyperparameter, not part of recognition
    model = (build or (lambda cls, **init_args: cls(**init_args)))(TUTORIALS[name], **kwargs)
    model.net.load_state_dict(net.state_dict())
    return model
