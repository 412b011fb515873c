"""Every model file mnist_lit reads or writes, in one place: checkpoints, weights, exported models.

- Checkpoints (`.ckpt`): `read_checkpoint` loads one with `weights_only=True` or says in one line why it is
  not one; `write_checkpoint` writes the tested model as `model.ckpt` (Lightning's layout, plain values
  only, so `test --ckpt_path`, `Tutorial.load_from_checkpoint` and `torch.load(weights_only=True)` take it);
  `checkpoint_model` rebuilds a checkpoint's network.
- Weights (`read_weights`, `load_weights`): a network's state_dict from a `.ckpt`, an exported TorchScript
  `.pt`, or a Keras `.keras` / `.h5` file (through `keras_file`), checked to hold the same tutorial.
- Exported models (`load_model`): a `.ckpt`, `.pt`, `.pt2`, `.onnx` or `.pte` (ExecuTorch) file as one
  function, images in and probabilities out, with the metadata that travels inside the file (`META_NAME`,
  see `export`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from mnist_lit import __version__, atomic
from mnist_lit.errors import UserError, described

if TYPE_CHECKING:
    from mnist_lit.models import Tutorial

# `mnist_lit.models` (and with it Lightning) is imported inside the functions that rebuild a tutorial:
# reading an exported file, and `classify`, `export` and `serve` answering --help, need torch alone

META_NAME = "mnist_lit.json"  # the metadata's name inside every exported file
INPUT = "float32 N x 1 x 28 x 28, pixels / 255 in [0, 1], light ink on black (MNIST style)"
OUTPUT = "float32 N x 10 class probabilities (softmax)"
WEIGHT_SUFFIXES = (".keras", ".h5", ".ckpt", ".pt")  # what `read_weights` takes
MODEL_SUFFIXES = (".ckpt", ".pt", ".pt2", ".onnx", ".pte")  # what `load_model` takes
PTE_MAX_BATCH = 1024  # the most images one call of an exported ExecuTorch program takes (memory is planned for it)
EDGE_EXTRA = "edge"  # the extra that holds ExecuTorch and torchao
FORMAT_NAMES = {".pt": "TorchScript", ".pt2": "torch.export", ".onnx": "ONNX", ".pte": "ExecuTorch (XNNPACK)"}

Predict = Callable[[torch.Tensor], torch.Tensor]  # images N x 1 x 28 x 28 in [0, 1] -> probabilities N x 10


class Probabilities(nn.Module):
    """A tutorial's network followed by softmax: what Keras' `predict` returns, and what every export holds."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).softmax(dim=1)


def _listed(suffixes: tuple[str, ...]) -> str:
    return f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


# ---------------------------------------------------------------- checkpoints


PASS_A_CHECKPOINT = "pass a .ckpt that fit wrote (checkpoints/<tutorial>/model.ckpt, or last.ckpt to resume)"
IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
               b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def _looks_like(path: Path, error: Exception) -> str:
    """What a file that torch.load refused looks like, and what to pass instead, for read_checkpoint's line."""
    import re
    import zipfile

    with path.open("rb") as f:
        head = f.read(512)
    if not head:
        return f"an empty file (0 bytes), not a checkpoint; {PASS_A_CHECKPOINT}"
    image = next((kind for magic, kind in IMAGE_MAGIC.items() if head.startswith(magic)), None)
    if image or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return (f"a {image or 'WebP'} image, not a checkpoint; {PASS_A_CHECKPOINT}. To classify the image: "
                f"classify --model checkpoints/<tutorial>/model.pt {path}")
    if head.startswith(b"\x89HDF"):
        return f"an HDF5 file (a Keras .h5 model?), not a checkpoint; `import-keras {path}` makes one from a Keras model"
    # torch's weights_only unpickler stopped at a callable the file asks to be run (in a torch zip), or a
    # bare pickle names one (read with pickletools, which runs nothing)
    unsafe = re.search(r"GLOBAL ([\w.]+)", str(error))
    called = unsafe[1] if unsafe else _pickle_global(path) if head.startswith(b"\x80") else None
    if called:
        return (f"refused: a pickle that would run code when loaded ({called}); mnist_lit loads checkpoints "
                f"with weights_only=True and never runs a file's code. {PASS_A_CHECKPOINT[0].upper()}{PASS_A_CHECKPOINT[1:]}")
    try:
        names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    except (zipfile.BadZipFile, OSError, ValueError):  # a zip's end record over a damaged directory
        names = []
    if names:
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return (f"a TorchScript model (what export writes), not a checkpoint; classify, serve and "
                    f"--weights take it; here {PASS_A_CHECKPOINT}")
        if any("serialized_exported_program" in n or n.endswith("/archive_format") for n in names):
            return f"a torch.export program (.pt2), not a checkpoint; classify and serve take it; here {PASS_A_CHECKPOINT}"
        if "config.json" in names and "model.weights.h5" in names:
            return f"a Keras .keras model, not a checkpoint; `import-keras {path}` makes one from it"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file (it starts {first!r}), not a checkpoint; a config goes to --config; {PASS_A_CHECKPOINT}"
    # a cut copy, a damaged file, or bytes of no known kind: torch's first sentence, whole words only
    detail = re.split(r"(?<=[.!?])\s", " ".join(str(error).split()), maxsplit=1)[0].rstrip(".")
    detail = detail if len(detail) <= 100 else detail[:100].rsplit(" ", 1)[0] + " ..."
    return (f"not a readable checkpoint (damaged, cut short, or another kind of file: {error.__class__.__name__}"
            f"{': ' + detail if detail else ''}); {PASS_A_CHECKPOINT}")


def _pickle_global(path: Path) -> str | None:
    """The first callable other than torch's or an OrderedDict that a bare pickle names, found without running it."""
    import pickletools

    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(path.read_bytes()[: 1 << 20]):
            name = (arg.replace(" ", ".") if op.name in ("GLOBAL", "INST") else
                    ".".join(strings[-2:]) if op.name == "STACK_GLOBAL" and len(strings) >= 2 else None)
            if name and not name.startswith(("torch.", "collections.OrderedDict")):
                return name
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a cut or damaged pickle: what it names up to there is all there is
        pass
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an mnist_lit checkpoint with `weights_only=True`, or say in one line what the file is instead
    (an image, text, an empty file, a pickle that would run code...) and what to pass."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's notes on a pickle protocol or a TorchScript file: the line says it
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle of another kind, random bytes...
        raise UserError(f"{path}: {_looks_like(path, e)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("mnist_lit"), dict) \
            or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path}: not an mnist_lit checkpoint (no model metadata in it)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint["state_dict"].items()):
        raise UserError(f"{path}: its state_dict holds more than named tensors")
    return checkpoint


def write_checkpoint(path: Path, model: Tutorial, epoch: int = 0, global_step: int = 0, **meta: Any) -> None:
    """The model's weights as a checkpoint in Lightning's layout, atomically; `meta` joins its metadata.

    The hyperparameters are the model's own (a model the Lightning CLI built records its class there too);
    `test --ckpt_path` finds the tutorial from the metadata when they do not (mnist_lit.cli).
    """
    import lightning as L

    hparams = dict(model.hparams)
    checkpoint = {
        "epoch": epoch, "global_step": global_step, "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "hparams_name": "kwargs", "hyper_parameters": hparams,
        "mnist_lit": {**model.metadata(), **meta},
    }
    atomic.write_bytes_from(path, lambda f: torch.save(checkpoint, f))


def net_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain network's part of a Tutorial's (or an exported Probabilities') state_dict."""
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def _put_weights(path: Path, net: nn.Module, state: dict[str, torch.Tensor], tutorial: str) -> None:
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the {tutorial} network ({str(e).splitlines()[0]})") from None


def checkpoint_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The plain network of a checkpoint, in eval mode, and its metadata (tutorial, classes...)."""
    from mnist_lit.models import TUTORIALS

    checkpoint = read_checkpoint(path)
    meta = checkpoint["mnist_lit"]
    if not isinstance(meta.get("tutorial"), str) or meta["tutorial"] not in TUTORIALS:
        name = repr(meta["tutorial"])[:80] if isinstance(meta.get("tutorial"), str) else "(no name)"
        raise UserError(f"{path}: unknown tutorial {name}")
    classes = meta.get("classes")
    if not isinstance(meta.get("dataset"), str) or not isinstance(classes, list) or len(classes) != 10 \
            or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{path}: its metadata lacks the data set's name or its 10 class names")
    hparams = checkpoint.get("hyper_parameters", {})
    if not isinstance(hparams, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None)))
                                                for k, v in hparams.items()):
        raise UserError(f"{path}: its hyperparameters are not plain names and values")
    try:
        model = TUTORIALS[meta["tutorial"]](**{k: v for k, v in hparams.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:  # a name the tutorial does not take, a value out of range
        raise UserError(f"{path}: hyperparameters the {meta['tutorial']} tutorial does not take "
                        f"({described(e)})") from None
    _put_weights(Path(path), model.net, net_state(checkpoint["state_dict"]), meta["tutorial"])
    return model.net.eval(), meta


def finished_epochs(checkpoint: dict[str, Any]) -> int | None:
    """The epochs a training checkpoint (last.ckpt) has finished, from the run record it carries."""
    history = checkpoint.get("callbacks", {}).get("RunRecorder", {}).get("history")
    return history[-1]["epoch"] if history else None


def read_last(last: Path, previous: Path) -> dict[str, Any]:
    """last.ckpt, or one line saying it is damaged and whether the epoch before it is kept (`previous`)."""
    try:
        return read_checkpoint(last)
    except UserError as e:
        hint = (f"the epoch before it is kept: continue with --ckpt_path {previous}" if previous.is_file()
                else "no earlier checkpoint is kept: start again without --ckpt_path")
        raise UserError(f"{e}; {hint}") from None


def check_start(path: Path | str, checkpoint: dict[str, Any], tutorial: str | None, asked: dict[str, Any] | None,
                fitting: bool, max_epochs: int | None) -> str | None:
    """Whether a run may start from `checkpoint` (`--ckpt_path`): one-line refusals, or the note to print.

    `tutorial` and `asked` are the config's tutorial and model arguments; `fitting` says the run trains
    (test, validate and predict read only the weights; a fit needs the training state that last.ckpt holds
    and model.ckpt does not), up to the Trainer's `max_epochs`.
    - A checkpoint of another tutorial is refused: Lightning would quietly rebuild the checkpoint's model
      instead, and train it into the config's output folder.
    - A fit that already trained more epochs than `max_epochs` asks for is refused (one whose last epoch
      is in the checkpoint resumes to its test and outputs, as it should).
    - For the same tutorial Lightning rebuilds the model with the checkpoint's hyperparameters, whatever
      the config says: the note names each value that changes that way.
    """
    held = checkpoint["mnist_lit"].get("tutorial")
    if fitting and "optimizer_states" not in checkpoint:  # model.ckpt: the tested weights alone
        raise UserError(f"{path}: holds the tested weights only, no training state to resume; resume from "
                        f"last.ckpt, or start a new fit from these weights with --weights {path}")
    if tutorial and held != tutorial:
        raise UserError(f"{path}: holds the {held} tutorial, but the config is {tutorial}'s; use --config {held}, "
                        "or another checkpoint")
    done = finished_epochs(checkpoint)
    if fitting and done is not None and max_epochs not in (None, -1) and done > max_epochs:
        raise UserError(f"{path}: already trained {done} epochs, more than --trainer.max_epochs {max_epochs}; "
                        f"ask for {done} or more to continue it, or evaluate it with `test --ckpt_path {path}`")
    changed = [f"{k} {v!r} (not {asked.get(k)!r})" for k, v in checkpoint.get("hyper_parameters", {}).items()
               if not k.startswith("_") and asked is not None and k in asked and asked.get(k) != v]
    return f"{path}: the model keeps the checkpoint's {', '.join(changed)}" if changed else None


# ---------------------------------------------------------------- weights


@contextlib.contextmanager
def quiet_torchscript():
    """torch 2.14 marks TorchScript deprecated and warns on script, save and load: the README says it once."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, message=r"(?s).*(TorchScript|torch\.jit)")
        yield


def read_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript model file and the metadata inside it ({} when it has none)."""
    files = {META_NAME: ""}
    with quiet_torchscript():
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    return model, json.loads(files[META_NAME]) if files[META_NAME] else {}


def read_weights(path: str | Path) -> tuple[str | None, dict[str, torch.Tensor]]:
    """The tutorial a model file holds and its network's state_dict: a Keras `.keras` / `.h5` file, an
    mnist_lit `.ckpt`, or a TorchScript `.pt` written by `export`."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"{path}: weights must be a {_listed(WEIGHT_SUFFIXES)} file")
    if suffix in (".keras", ".h5"):
        from mnist_lit import keras_file

        net = keras_file.to_torch(keras_file.read_keras(path))
        return keras_file.recognise(path, net), net.state_dict()
    if suffix == ".ckpt":
        checkpoint = read_checkpoint(path)
        return checkpoint["mnist_lit"].get("tutorial"), net_state(checkpoint["state_dict"])
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        scripted, meta = read_torchscript(path)
    except Exception as e:  # not a zip, not TorchScript, truncated...
        raise UserError(f"{path}: not a readable TorchScript file ({e.__class__.__name__})") from None
    return meta.get("tutorial"), net_state(scripted.state_dict())  # Probabilities(net): keys net.*


def load_weights(model: Tutorial, path: str | Path) -> None:
    """Copy into `model` the weights of a Keras, checkpoint or TorchScript file holding the same tutorial."""
    tutorial, weights = read_weights(path)
    if tutorial != model.name:
        raise UserError(f"{path}: holds the {tutorial} tutorial's network, not {model.name}'s")
    _put_weights(Path(path), model.net, weights, model.name)


# ---------------------------------------------------------------- exported models


def metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What travels inside every exported file: a checkpoint's metadata and the model's contract."""
    return {"tutorial": meta["tutorial"], "dataset": meta["dataset"], "classes": list(meta["classes"]),
            "input": INPUT, "output": OUTPUT, "mnist_lit_version": __version__}


def _no_grad(model: Callable[[torch.Tensor], torch.Tensor]) -> Predict:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)
    return run


class NativeLog:
    """What ExecuTorch's runtime logs inside the `with` block, kept instead of shown.

    It logs its CPU probing on every load, and the reason it refuses a file: from C++ to file descriptor 2,
    or through Python's sys.stderr; both are caught."""

    def __enter__(self) -> NativeLog:
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self._python = contextlib.redirect_stderr(io.StringIO())
        self._caught = self._python.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._python.__exit__(*exc)
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace") + self._caught.getvalue()
        self._file.close()

    def last_line(self) -> str:
        lines = [line.split("] ", 1)[-1] for line in self.text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def read_executorch(path: str | Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """An ExecuTorch program written by `export --format pte`, and the metadata inside it ({} when none).

    Larger inputs than the program's planned batch (`max_batch`) run in slices of that size.
    """
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(8)
    # a flatbuffer's identifier (ET12...) sits at bytes 4-8; the runtime aborts the whole process, rather
    # than raising, when it logs the identifier of random bytes that are not text
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isalnum():
        raise ValueError("not an ExecuTorch program")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "this API is experimental"
            pytree_log = logging.getLogger("torch.utils._pytree")  # torchao's deprecated registrations
            level = pytree_log.level
            pytree_log.setLevel(logging.ERROR)
            try:
                from executorch.runtime import Runtime
            finally:
                pytree_log.setLevel(level)
    except ImportError:
        raise UserError(f"{path}: reading an ExecuTorch .pte needs the {EDGE_EXTRA} extra: "
                        f"pip install 'mnist-lit[{EDGE_EXTRA}]'") from None
    with NativeLog() as log:
        try:
            program = Runtime.get().load_program(path)
            forward = program.load_method("forward")
            info = program.load_method(META_NAME).execute([])[0] if META_NAME in program.method_names else ""
        except Exception as e:
            error = e
        else:
            error = None
    if error is not None:  # the runtime's own line says why ("Failed to load program, error: 0x23" does not)
        raise RuntimeError(log.last_line() or str(error).strip()) from None
    meta = json.loads(info) if info else {}
    bound = int(meta.get("max_batch", PTE_MAX_BATCH))

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward.execute([part.contiguous()])[0] for part in x.split(bound)])
    return run, meta


def _read_exported(path: Path, suffix: str) -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any]]:
    """An exported file's model and the metadata inside it ({} when it has none)."""
    if suffix == ".pt":
        return read_torchscript(path)
    if suffix == ".pte":
        return read_executorch(path)
    files = {META_NAME: ""}
    if suffix == ".pt2":
        export_log = logging.getLogger("torch.export")
        level = export_log.level
        export_log.setLevel(logging.ERROR)  # a broken file is reported in one line, not a logged traceback
        try:
            model = torch.export.load(str(path), extra_files=files).module()
        finally:
            export_log.setLevel(level)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        files[META_NAME] = session.get_modelmeta().custom_metadata_map.get(META_NAME, "")
        model = lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])  # noqa: E731
    return model, json.loads(files[META_NAME]) if files[META_NAME] else {}


def load_model(path: str | Path) -> tuple[Predict, dict[str, Any]]:
    """Any of the five model files as `images (N x 1 x 28 x 28) -> probabilities (N x 10)`, with its metadata;
    an exported file's metadata names its format, and an int8 one its quantization."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UserError(f"{path}: not a model file this reads ({_listed(MODEL_SUFFIXES)})")
    if suffix == ".ckpt":
        net, meta = checkpoint_model(path)
        return _no_grad(Probabilities(net).eval()), metadata(meta)
    try:
        model, meta = _read_exported(path, suffix)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: cannot load the model ({described(e, 160)})") from None
    if len(meta.get("classes", [])) != 10:
        raise UserError(f"{path}: no mnist_lit metadata (class names) inside; export it with python -m mnist_lit export")
    return _no_grad(model), {**meta, "format": FORMAT_NAMES[suffix]}
