"""Fuzzing the four readers of files a user hands mnist_lit: every input ends in a result or the one-line error.

A target takes bytes and runs one reader on them, as the command line does:
- "idx": an IDX file, plain or gzip, beside three valid ones: `data.prepare` then `data.read_dataset` (the
  decompression, the IDX check, torchvision's reader and the checks after it) give a dataset or a DataError.
- "image": `classify.frame` gives a 1 x 28 x 28 image in [0, 1] or an ImageError.
- "keras": a `.keras` zip or legacy `.h5` file: `keras_file.tutorial_of` gives a tutorial or a UserError.
- "checkpoint": a `.ckpt`: `model_files.load_model` gives a model that answers 10 probabilities, or a UserError.
Anything else (another exception, a message of two lines or that does not name the file, a hang) is a
finding. Seeds are real files cut small (`seeds`); `mutants` varies them byte by byte, and `structured`
edits what is inside them (config values, HDF5 datasets, checkpoint entries), which byte flips rarely reach.

The suite runs a bounded number of inputs (tests/test_fuzz.py). A longer run, by hand:

    PYTHONPATH=$PWD python -m tests.fuzz all --seconds 300                    # hypothesis, each reader 300 s
    PYTHONPATH=$PWD python -m tests.fuzz image --engine atheris --seconds 300  # coverage-guided bytes

It prints, per reader, the inputs run, the time, the findings and the process's peak RSS; each finding is
written under tests/fuzz_regressions/<reader>/, which tests/test_fuzz.py replays.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.helpers import KERAS, REPO, make_checkpoint

REGRESSIONS = REPO / "tests" / "fuzz_regressions"
READERS = ("idx", "image", "keras", "checkpoint")
INPUT_SECONDS = 60  # one input taking longer is a hang (a seed takes milliseconds, a 50-megapixel image 15 s)
# Peak RSS of a fuzzing process: its imports (torch, Lightning) take ~750 MB, and the largest image that
# classify decodes (MAX_PIXELS, 50 megapixels) up to ~1 GB more (measured: docs/benchmarks.md#fuzzing)
RSS_BOUND_MB = 2048
AS_LIMIT = 8 << 30  # address space of a fuzzing process (torch's imports map ~3.6 GB)


class Finding(Exception):
    """An input that ended in neither a result nor the reader's one-line error."""


@cache
def workdir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="mnist_lit-fuzz-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def one_line(error: Exception, names: str | None = None) -> str:
    message = str(error)
    if not message.strip() or "\n" in message or (names is not None and names not in message):
        raise Finding(f"not a one-line message naming {names}: {message!r}")
    return message


@contextlib.contextmanager
def time_limit(seconds: float):
    """A hang becomes a Finding (SIGALRM: the main thread only, as in pytest and the command line)."""
    def expired(signum, frame):
        raise Finding(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- targets


IDX_NAMES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@cache
def _idx_folder() -> Path:
    """Valid small train and test files, in torchvision's layout under workdir()/idx; the target replaces one
    test file."""
    folder = workdir() / "idx" / "MNIST" / "raw"
    folder.mkdir(parents=True)
    images, labels = _mnist_cut(5)
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte").write_bytes(images)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    return folder


def idx(data: bytes) -> str | None:
    """The first byte picks the file (test images or labels) and its form: plain, these bytes as the .gz
    file itself, or these bytes gzip-compressed."""
    from mnist_lit.data import DataError, prepare, read_dataset

    folder, which, form, body = _idx_folder(), (data[:1] or b"\0")[0] % 2, (data[:1] or b"\0")[0] // 2 % 3, data[1:]
    name = IDX_NAMES[which]
    for other, valid in zip(IDX_NAMES, _mnist_cut(5)):  # the other file valid, each file in one form only
        (folder / f"{other}.gz").unlink(missing_ok=True)
        (folder / other).write_bytes(valid)
    if form == 0:
        path = folder / name
        path.write_bytes(body)
    else:
        (folder / name).unlink()
        path = folder / f"{name}.gz"
        path.write_bytes(body if form == 1 else gzip.compress(body, compresslevel=1))
    try:
        prepare("mnist", workdir() / "idx")  # (decompresses the .gz beside itself)
        ds = read_dataset("mnist", workdir() / "idx", "test")
    except DataError as e:  # (a message about two files names the second by its name alone)
        return one_line(e, path.name)
    if tuple(ds.data.shape[1:]) != (28, 28) or len(ds.data) != len(ds.targets):
        raise Finding(f"read_dataset accepted images {tuple(ds.data.shape)} with {len(ds.targets)} labels")


def image(data: bytes) -> str | None:
    """The first byte picks the data set's framing (MNIST or Fashion-MNIST)."""
    from mnist_lit.classify import ImageError, frame

    meta = {"dataset": "fashion_mnist" if (data[:1] or b"\0")[0] % 2 else "mnist"}
    try:
        x = frame(meta, io.BytesIO(data[1:]))
    except ImageError as e:
        return one_line(e)
    if x.shape != (1, 28, 28) or not bool(x.isfinite().all()) or float(x.min()) < 0 or float(x.max()) > 1:
        raise Finding(f"frame gave {tuple(x.shape)} in [{float(x.min())}, {float(x.max())}]")


def _model_file(data: bytes, name: str) -> Path:
    path = workdir() / name
    path.write_bytes(data)
    return path


def keras(data: bytes) -> str | None:
    """The bytes as a file named .keras (the reader goes by the contents: zip or HDF5)."""
    from mnist_lit import keras_file
    from mnist_lit.errors import UserError
    from mnist_lit.keras_file import tutorial_of

    keras_file.READ_SECONDS = 3  # a reader looping inside HDF5 is stopped sooner than a user's 60 s
    path = _model_file(data, "model.keras")
    try:
        model = tutorial_of(path)
    except UserError as e:
        return one_line(e, str(path))
    _answers(model.net.eval(), lambda p: p.softmax(dim=1))


def checkpoint(data: bytes) -> str | None:
    from mnist_lit.errors import UserError
    from mnist_lit.model_files import load_model

    path = _model_file(data, "model.ckpt")
    try:
        model, meta = load_model(path)
    except UserError as e:
        return one_line(e, str(path))
    if len(meta["classes"]) != 10:
        raise Finding(f"load_model gave {len(meta['classes'])} class names")
    _answers(model)


def _answers(model: Callable, then: Callable = lambda p: p) -> None:
    import torch

    with torch.no_grad():
        probs = then(model(torch.rand(2, 1, 28, 28)))
    if probs.shape != (2, 10):
        raise Finding(f"the model answers {tuple(probs.shape)}, not 2 x 10")


TARGETS: dict[str, Callable[[bytes], str | None]] = {"idx": idx, "image": image, "keras": keras, "checkpoint": checkpoint}


@cache
def _import_readers() -> None:
    import mnist_lit.classify, mnist_lit.data, mnist_lit.keras_file, mnist_lit.model_files, mnist_lit.models  # noqa: E401,F401


def run_one(reader: str, data: bytes, timed: bool = True) -> str | None:
    """One input through a target: the reader's one-line refusal, or None when it read the file. Raises
    Finding (anything unexpected becomes one, with its traceback). `timed=False`: no time limit of ours
    (libFuzzer keeps its own, which also stops a loop inside C code)."""
    _import_readers()  # (not timed: importing Lightning takes seconds, more on a busy machine)
    try:
        with time_limit(INPUT_SECONDS) if timed else contextlib.nullcontext():
            return TARGETS[reader](data)
    except Finding:
        raise
    except BaseException as e:  # noqa: BLE001 - a traceback, MemoryError, RecursionError... all findings
        if isinstance(e, KeyboardInterrupt):
            raise
        raise Finding("".join(traceback.format_exception(e)).strip()) from None


# ---------------------------------------------------------------- seeds: real files, cut small


@cache
def _mnist_cut(n: int) -> tuple[bytes, bytes]:
    """The first n test images and labels of the shipped MNIST, as IDX files."""
    raw = REPO / "data" / "MNIST" / "raw"
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz") as f:
        images = f.read(16 + n * 784)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:
        labels = f.read(8 + n)
    count = n.to_bytes(4, "big")
    return images[:4] + count + images[8:], labels[:4] + count + labels[8:]


def _digit_photo() -> np.ndarray:
    """The shipped first test digit as a photo: dark ink on light paper, 40 x 36."""
    images, _ = _mnist_cut(1)
    digit = np.frombuffer(images[16:], np.uint8).reshape(28, 28)
    paper = np.full((40, 36), 230, np.uint8)
    paper[6:34, 4:32] = 230 - digit * (200 / 255)
    return paper


def _image_seeds() -> list[bytes]:
    from PIL import Image

    gray = Image.fromarray(_digit_photo())
    rgba = gray.convert("RGBA")
    rgba.putalpha(Image.fromarray((np.asarray(gray) < 128).astype(np.uint8) * 255))
    forms = [(gray, "PNG", {}), (gray.convert("RGB"), "JPEG", {"quality": 80}), (gray.convert("P"), "GIF", {}),
             (gray, "BMP", {}), (gray.convert("I;16"), "TIFF", {}), (gray.convert("RGB"), "WEBP", {}),
             (gray, "PPM", {}), (rgba, "PNG", {}), (gray.convert("1"), "TIFF", {"compression": "group4"}),
             (gray.convert("F"), "TIFF", {})]
    seeds = []
    for i, (im, fmt, options) in enumerate(forms):
        buffer = io.BytesIO()
        im.save(buffer, fmt, **options)
        seeds.append(bytes([i % 2]) + buffer.getvalue())
    return seeds


def _model_only(h5_file: Path) -> bytes:
    """A legacy .h5 model file without its optimizer's variables (as large as the weights)."""
    import h5py

    buffer = io.BytesIO()
    with h5py.File(h5_file, "r") as src, h5py.File(buffer, "w") as dst:
        dst.attrs["model_config"] = src.attrs["model_config"]
        src.copy("model_weights", dst)
    return buffer.getvalue()


def _checkpoint_seeds() -> list[bytes]:
    import torch

    seeds = []
    for name in ("softmax_regression", "tiny_mlp"):
        path = workdir() / f"seed-{name}.ckpt"
        make_checkpoint(name, path)
        seeds.append(path.read_bytes())
    buffer = io.BytesIO()  # the format before torch 1.6, which torch.load still reads
    torch.save(torch.load(path, weights_only=True), buffer, _use_new_zipfile_serialization=False)
    return seeds + [buffer.getvalue()]


@cache
def seeds(reader: str) -> tuple[bytes, ...]:
    if reader == "idx":
        images, labels = _mnist_cut(5)
        return tuple(bytes([form * 2 + which]) + (gzip.compress(body) if form == 1 else body)
                     for which, body in ((0, images), (1, labels)) for form in range(3))
    if reader == "image":
        return tuple(_image_seeds())
    if reader == "keras":
        return ((KERAS / "softmax_regression.keras").read_bytes(), _model_only(KERAS / "tiny_mlp.h5"))
    return tuple(_checkpoint_seeds())


# ---------------------------------------------------------------- mutations (hypothesis strategies)


def mutants(reader: str):
    """A seed changed in a few places: bytes flipped, overwritten with edge values, cut, repeated, spliced."""
    from hypothesis import strategies as st

    edges = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff",
             b"\x00\x00\x01\x00", b"\x00\x01\x00\x00", b"\x80\x00\x00\x00"]
    op = st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "delete", "repeat"]),
                   st.floats(0, 1), st.integers(0, 255), st.sampled_from(edges), st.integers(1, 64))

    def apply(seed: bytes, ops: list) -> bytes:
        b = bytearray(seed)
        for kind, where, byte, edge, n in ops:
            at = int(where * len(b))
            if kind == "flip" and b:
                b[min(at, len(b) - 1)] ^= 1 << (byte % 8)
            elif kind == "set":
                b[at: at + len(edge)] = edge
            elif kind == "cut":
                del b[at:]
            elif kind == "insert":
                b[at:at] = bytes([byte]) * n
            elif kind == "delete":
                del b[at: at + n]
            elif kind == "repeat":
                b[at:at] = b[at: at + n] * 4
        return bytes(b)

    # the first bytes matter most (magic numbers, headers, the target's selector byte)
    head_ops = st.lists(op.map(lambda o: (o[0], o[1] * 0.01, *o[2:])), max_size=3)
    return st.builds(lambda seed, ops, head: apply(seed, head + ops),
                     st.sampled_from(seeds(reader)), st.lists(op, min_size=1, max_size=6), head_ops)


def _json_values():
    from hypothesis import strategies as st

    leaves = (st.none() | st.booleans() | st.integers(-3, 64) | st.integers() | st.sampled_from([10**12, 2**63, -1])
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
              | st.sampled_from(["relu", "softmax", "linear", "valid", "same", "Dense", "Conv2D", "Flatten"]))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                        max_leaves=8)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON-like tree, as a tuple of keys and indexes."""
    places = [prefix]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    for k, v in items:
        places += _paths(v, prefix + (k,))
    return places


def _replaced(tree: Any, path: tuple, value: Any, delete: bool = False) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        out = dict(tree)
        if delete and not rest:
            out.pop(head)
        else:
            out[head] = _replaced(tree[head], rest, value, delete)
        return out
    out = list(tree)
    if delete and not rest:
        del out[head]
    else:
        out[head] = _replaced(tree[head], rest, value, delete)
    return type(tree)(out) if isinstance(tree, tuple) else out


def _edit_tree(draw, tree: Any, values) -> Any:
    """1 to 3 edits: a value replaced or deleted, or an entry of any key added to a dict."""
    from hypothesis import strategies as st

    for _ in range(draw(st.integers(1, 3))):
        place = draw(st.sampled_from(_paths(tree)))
        edit = draw(st.sampled_from(["replace", "delete", "add"]))
        here = _at(tree, place)
        if edit == "add" and isinstance(here, dict):
            key = draw(st.text(max_size=8) | st.integers() | st.none())
            tree = _replaced(tree, place, {**here, key: draw(values)})
        else:
            tree = _replaced(tree, place, draw(values), delete=bool(place) and edit == "delete")
    return tree


def _at(tree: Any, place: tuple) -> Any:
    for key in place:
        tree = tree[key]
    return tree


def _h5_edits():
    """An edit of a weight in an HDF5 file: another shape or type, a group, or a huge declared shape with
    nothing stored (a small file whose dataset would take terabytes to read)."""
    from hypothesis import strategies as st

    shapes = st.lists(st.integers(0, 40), max_size=4).map(tuple)
    return st.one_of(
        st.tuples(st.just("array"), shapes, st.sampled_from(["f4", "f8", "f2", "i8", "u1", "bool", "c8", "S3"])),
        st.tuples(st.just("huge"), st.sampled_from([(784, 10**6), (10**6, 10**6), (2**31, 16), (1, 2**40)]),
                  st.sampled_from(["f4", "f8"])),
        st.tuples(st.just("group"), st.just(()), st.just("")),
        st.tuples(st.just("scalar"), st.just(()), st.sampled_from(["f4", "S3"])))


def _apply_h5_edit(h5, name: str, edit: tuple) -> None:
    kind, shape, dtype = edit
    del h5[name]
    if kind == "array":
        h5[name] = np.zeros(shape, dtype=dtype)
    elif kind == "huge":
        h5.create_dataset(name, shape=shape, dtype=dtype, chunks=(1,) * len(shape))
    elif kind == "group":
        h5.create_group(name)
    else:
        h5[name] = np.zeros((), dtype=dtype)


def _datasets(h5) -> list[str]:
    import h5py

    names: list[str] = []
    h5.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def structured(reader: str):
    """A seed with its insides edited, for the readers whose files have insides worth editing."""
    import h5py
    from hypothesis import strategies as st

    @st.composite
    def keras_edit(draw) -> bytes:
        seed = draw(st.sampled_from(seeds("keras")))
        if seed.startswith(b"PK"):
            with zipfile.ZipFile(io.BytesIO(seed)) as z:
                parts = {n: z.read(n) for n in z.namelist()}
            if draw(st.booleans()):
                config = _edit_tree(draw, json.loads(parts["config.json"]), _json_values())
                parts["config.json"] = json.dumps(config).encode()
            else:
                buffer = io.BytesIO(parts["model.weights.h5"])
                with h5py.File(buffer, "a") as h5:
                    _apply_h5_edit(h5, draw(st.sampled_from(_datasets(h5))), draw(_h5_edits()))
                parts["model.weights.h5"] = buffer.getvalue()
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as z:
                for n, data in parts.items():
                    z.writestr(n, data)
            return out.getvalue()
        buffer = io.BytesIO(seed)
        with h5py.File(buffer, "a") as h5:
            if draw(st.booleans()):
                config = _edit_tree(draw, json.loads(h5.attrs["model_config"]), _json_values())
                h5.attrs["model_config"] = json.dumps(config)
            else:
                _apply_h5_edit(h5, draw(st.sampled_from(_datasets(h5))), draw(_h5_edits()))
        return buffer.getvalue()

    @st.composite
    def checkpoint_edit(draw) -> bytes:
        import torch

        seed = draw(st.sampled_from(seeds("checkpoint")[:2]))
        tree = torch.load(io.BytesIO(seed), weights_only=True)
        tensors = st.builds(lambda shape, dtype: torch.zeros(shape, dtype=dtype),
                            st.lists(st.integers(0, 12), max_size=3).map(tuple),
                            st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool, torch.float16]))
        tree = _edit_tree(draw, tree, _json_values() | tensors)
        buffer = io.BytesIO()
        torch.save(tree, buffer)
        return buffer.getvalue()

    return {"keras": keras_edit(), "checkpoint": checkpoint_edit()}.get(reader)


def inputs(reader: str):
    s = structured(reader)
    return mutants(reader) if s is None else (mutants(reader) | s)


# ---------------------------------------------------------------- bombs: small files that declare far more than they hold


def _rezip(keras_file: bytes, **parts: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(keras_file)) as z:
        merged = {n: z.read(n) for n in z.namelist()} | parts
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in merged.items():
            z.writestr(n, data)
    return out.getvalue()


def _weights_edited(keras_file: bytes, edit: Callable) -> bytes:
    import h5py

    with zipfile.ZipFile(io.BytesIO(keras_file)) as z:
        buffer = io.BytesIO(z.read("model.weights.h5"))
    with h5py.File(buffer, "a") as h5:
        edit(h5)
    return _rezip(keras_file, **{"model.weights.h5": buffer.getvalue()})


class _CallsOut:
    """A pickle that runs a command when loaded without weights_only (here a harmless `true`)."""

    def __reduce__(self):
        return os.system, ("true",)


def bombs() -> dict[str, tuple[str, Callable[[], bytes]]]:
    """Inputs made on purpose, kept in tests/fuzz_regressions (`python -m tests.fuzz bombs` writes them):
    file -> (reader, maker). Each is a few KB and declares megabytes to terabytes."""
    import struct
    import zlib as zl

    import torch

    def huge_png() -> bytes:
        png = seeds("image")[0][1:]
        ihdr = b"IHDR" + struct.pack(">II", 100_000, 100_000) + png[24:29]  # 10 gigapixels declared
        return b"\x00" + png[:12] + ihdr + struct.pack(">I", zl.crc32(ihdr)) + png[33:]

    def pickled() -> bytes:
        buffer = io.BytesIO()
        torch.save({"state_dict": {}, "mnist_lit": _CallsOut()}, buffer)
        return buffer.getvalue()

    def kernel_declared(shape: tuple[int, int], dtype: str) -> bytes:
        def edit(h5) -> None:
            del h5["layers/dense/vars/0"]
            h5.create_dataset("layers/dense/vars/0", shape=shape, dtype=dtype, chunks=(1, 1024))
        return _weights_edited(seeds("keras")[0], edit)

    def config_of(text: bytes) -> bytes:
        return _rezip(seeds("keras")[0], **{"config.json": text})

    def images() -> bytes:
        return _mnist_cut(5)[0]

    def labels() -> bytes:
        return _mnist_cut(5)[1]

    config = lambda: zipfile.ZipFile(io.BytesIO(seeds("keras")[0])).read("config.json")  # noqa: E731
    return {
        # a .gz whose header declares 5 images and that inflates to 64 MB more
        "idx/gzip-inflates-past-its-header.bin": ("idx", lambda: b"\x02" + gzip.compress(images() + bytes(64 << 20), 9, mtime=0)),
        # a labels file of 100 million labels beside 5 images: torchvision would hold them as 800 MB of int64
        "idx/labels-declare-100M.bin": ("idx", lambda: b"\x03" + gzip.compress(
            labels()[:4] + (10**8).to_bytes(4, "big") + bytes(10**8), 9, mtime=0)),
        "image/png-declares-10-gigapixels.bin": ("image", huge_png),
        # HDF5 datasets declared huge with nothing stored: reading one fills gigabytes to terabytes
        "keras/hdf5-kernel-declares-3GB.bin": ("keras", lambda: kernel_declared((784, 10**6), "f4")),
        "keras/hdf5-kernel-declares-7TB.bin": ("keras", lambda: kernel_declared((10**6, 10**6), "f8")),
        # a config.json that inflates to 64 MB (valid JSON: the config, then spaces)
        "keras/zip-config-inflates-to-64MB.bin": ("keras", lambda: config_of(config() + b" " * (64 << 20))),
        "keras/config-nested-100000-deep.bin": ("keras", lambda: config_of(b"[" * 100_000 + b"]" * 100_000)),
        "checkpoint/pickle-calls-os-system.bin": ("checkpoint", pickled),
    }


# ---------------------------------------------------------------- regressions


def keep(reader: str, data: bytes) -> Path:
    """A finding as a small file under tests/fuzz_regressions/<reader>/, named by its hash."""
    folder = REGRESSIONS / reader
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha1(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    return path


def regressions(reader: str) -> list[Path]:
    """Every file kept for a reader: this harness's findings (<hash>.bin), the bombs, and atheris' own
    (atheris-crash-<hash>, -oom-, -timeout-; renamed when they were looked into)."""
    folder = REGRESSIONS / reader
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# ---------------------------------------------------------------- the command line


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _TimeUp(Exception):
    pass


def _signature(finding: Finding) -> str:
    """What tells two findings apart: the exception and the innermost line of mnist_lit it passed."""
    lines = str(finding).splitlines()
    ours = [line.strip() for line in lines if "mnist_lit/" in line and line.strip().startswith("File")]
    return f"{lines[-1].split(':')[0]} at {ours[-1] if ours else '-'}"


def fuzz_hypothesis(reader: str, seconds: float, save: bool) -> dict[str, Any]:
    """The seeds and the kept regressions, then inputs drawn at random for `seconds` (no shrinking: a
    finding is kept as drawn); each distinct finding once."""
    from hypothesis import HealthCheck, Phase, given, settings

    ran, found = 0, {}
    last = workdir() / f"last-{reader}.bin"  # the input being read, should the process itself die
    print(f"{reader}: the input being read is in {last}", file=sys.stderr, flush=True)

    def check(data: bytes) -> None:
        nonlocal ran
        ran += 1
        last.write_bytes(data)
        try:
            run_one(reader, data)
        except Finding as e:
            if _signature(e) in found:
                return  # known: look for another
            found[_signature(e)] = {"input": str(keep(reader, data)) if save else None,
                                    "error": str(e).splitlines()[-1][:300]}
            print(f"{reader}: finding: {str(e)[-3000:]}", file=sys.stderr, flush=True)

    kept = seeds(reader) + tuple(p.read_bytes() for p in regressions(reader))
    for data in kept:
        check(data)
    start = time.monotonic()

    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(inputs(reader))
    def search(data: bytes) -> None:
        if time.monotonic() - start > seconds:
            raise _TimeUp
        check(data)

    with contextlib.suppress(_TimeUp):
        search()
    return {"reader": reader, "engine": "hypothesis", "replayed": len(kept), "inputs": ran - len(kept),
            "seconds": round(time.monotonic() - start, 1), "findings": list(found.values())}


def fuzz_atheris(reader: str, seconds: float, save: bool) -> None:
    """libFuzzer's coverage-guided byte mutation from the seeds (mnist_lit, PIL, zipfile and gzip
    instrumented), with its own RSS limit and a 10 s timeout; it prints its counts and exits at the
    first finding (the Keras file's known HDF5 loop is left out of its corpus: it would stop it at once)."""
    import atheris

    with atheris.instrument_imports(include=["mnist_lit", "PIL", "zipfile", "gzip", "json", "h5py"]):
        import mnist_lit.classify, mnist_lit.data, mnist_lit.keras_file, mnist_lit.model_files  # noqa: E401,F401
    corpus = workdir() / f"corpus-{reader}"
    corpus.mkdir(exist_ok=True)
    for seed in seeds(reader) + tuple(p.read_bytes() for p in regressions(reader) if "loops" not in p.name):
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    crashes = REGRESSIONS / reader if save else workdir()
    crashes.mkdir(parents=True, exist_ok=True)

    def one(data: bytes) -> None:
        run_one(reader, data, timed=False)

    mnist_lit.keras_file.ISOLATE = False  # HDF5 read here, where atheris sees its coverage
    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={int(seconds)}", f"-rss_limit_mb={RSS_BOUND_MB}",
                   "-timeout=10", "-max_len=262144", f"-artifact_prefix={crashes}/atheris-",
                   "-print_final_stats=1"], one)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("reader", choices=[*READERS, "all", "bombs"], help="bombs: write the made-on-purpose inputs")
    parser.add_argument("--seconds", type=float, default=60, help="per reader")
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--no-save", action="store_true", help="do not write findings under tests/fuzz_regressions")
    args = parser.parse_args(argv)
    if args.reader == "bombs":
        for name, (_, make) in bombs().items():
            (REGRESSIONS / name).parent.mkdir(parents=True, exist_ok=True)
            (REGRESSIONS / name).write_bytes(data := make())
            print(f"{REGRESSIONS / name}: {len(data):,} bytes")
        return 0
    readers = READERS if args.reader == "all" else (args.reader,)
    if args.engine == "atheris":
        if len(readers) != 1:
            parser.error("atheris fuzzes one reader per process")
        fuzz_atheris(readers[0], args.seconds, not args.no_save)
        return 0
    import warnings

    warnings.simplefilter("ignore")  # readers' warnings (Pillow's, torch's) are not findings
    # a guard for the machine: past this an allocation fails (a finding) instead of the kernel killing
    # a process; the bound checked is RSS_BOUND_MB, far below
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    failed = False
    for reader in readers:
        result = fuzz_hypothesis(reader, args.seconds, not args.no_save)
        result["peak_rss_mb"] = round(peak_rss_mb())
        failed |= bool(result["findings"]) or result["peak_rss_mb"] > RSS_BOUND_MB
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
