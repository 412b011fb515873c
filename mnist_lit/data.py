"""MNIST and Fashion-MNIST: finding the IDX files, reading them with torchvision, and serving batches.

torchvision's `MNIST` / `FashionMNIST` datasets read the files and name the classes. They read only
uncompressed files under <root>/<MNIST|FashionMNIST>/raw, so mnist_lit gives them a root of its own in its
cache folder (`cache_root()`), one per source folder: there a `.gz` is decompressed (once; atomically) and a
plain file is linked. Nothing is ever written into the folders the files are found in. Before torchvision
reads a file, `check_idx` turns a damaged one into a one-line error naming it (torchvision stops on a bare
assertion).

Two input paths share one contract (uint8 batches of N x 1 x 28 x 28 images and int64 labels, scaled to
[0, 1] on the training device in `on_after_batch_transfer`):
- "memory" (default): the datasets' `.data` / `.targets` tensors held once on the training device and
  sliced per batch.
- "torchvision": the same datasets, item by item, through a `DataLoader`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import math
import os
import shutil
import socket
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torchvision import datasets, transforms

from mnist_lit.errors import UserError

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FILES = tuple(name for pair in SPLITS.values() for name in pair)
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801  # uint8 type code, then 3 or 1 dimensions
CACHE_ENV = "MNIST_LIT_CACHE"


@dataclass(frozen=True)
class SystemCopy:
    """A read-only copy installed by an OS package."""

    folder: str
    package: str  # what installs it, named in messages


@dataclass(frozen=True)
class DatasetInfo:
    reader: type[datasets.MNIST]  # torchvision's dataset class: file layout, reader and class names
    system: tuple[SystemCopy, ...] = ()

    @property
    def folder(self) -> str:  # torchvision's folder name under the data root
        return self.reader.__name__

    @property
    def classes(self) -> tuple[str, ...]:
        # torchvision's names; its MNIST names read "7 - seven", Keras and mnist_lit print the digit
        return tuple(name.split(" - ")[0] for name in self.reader.classes)


DATASETS = {
    "mnist": DatasetInfo(datasets.MNIST),
    "fashion_mnist": DatasetInfo(datasets.FashionMNIST, system=(
        SystemCopy("/usr/share/datasets/fashion-mnist", "Debian's dataset-fashion-mnist package"),)),
}
DatasetName = Literal["mnist", "fashion_mnist"]


class DataError(UserError):
    """A data file is missing or is not a valid IDX file."""


# ---------------------------------------------------------------- IDX files


def check_idx(path: Path, magic: int, shown: Path | None = None) -> tuple[int, ...]:
    """Raise a one-line DataError if an uncompressed IDX file has the wrong magic number, a cut header, or
    a length that does not match its shape; else return its shape. `shown`: the file to name (the user's,
    not our copy)."""
    shown = shown or path
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise DataError(f"{shown}: unreadable ({e.__class__.__name__}: {e.strerror or e})") from None
    if size < 4:
        raise DataError(f"{shown}: too short to be an IDX file ({size} bytes)")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise DataError(f"{shown}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    if size < 4 + 4 * (magic & 0xFF):
        raise DataError(f"{shown}: truncated header")
    shape, expected = _declared(head)
    if size != expected:
        state = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{shown}: {state}: {size} bytes for shape {shape}, expected {expected}")
    return shape


def _declared(head: bytes) -> tuple[tuple[int, ...], int]:
    """The shape a uint8 IDX header declares (its fourth byte counts the dimensions) and the file's size."""
    header = 4 + 4 * head[3]
    shape = tuple(int.from_bytes(head[i: i + 4], "big") for i in range(4, header, 4))
    return shape, header + math.prod(shape)


def _file(folder: Path, name: str) -> Path | None:
    # the .gz first when both are there: a user who keeps both and replaces the .gz means the new one
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- mnist_lit's own copies


def cache_root() -> Path:
    """mnist_lit's own folder for the copies torchvision reads: $MNIST_LIT_CACHE, else
    $XDG_CACHE_HOME/mnist_lit, else ~/.cache/mnist_lit. Everything in it is mnist_lit's to replace."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "mnist_lit"
    try:
        return Path.home() / ".cache" / "mnist_lit"
    except RuntimeError:  # no HOME and no passwd entry (some containers)
        return Path(tempfile.gettempdir()) / "mnist_lit-cache"


def torchvision_root(folder: Path) -> Path:
    """The root torchvision reads `folder`'s files from: a folder of the cache that belongs to `folder`
    alone (named by a hash of its absolute path), so two sources never share or swap copies."""
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_root() / key


def _cannot_write(folder: Path, e: OSError) -> DataError:
    return DataError(f"{folder}: cannot write the uncompressed copy torchvision reads "
                     f"({e.strerror or e.__class__.__name__}); point {CACHE_ENV} at a writable folder")


def _raw_copy(src: Path, dst: Path) -> Path:
    """`dst` in the cache, holding what `src` holds for torchvision: a link to a plain file, the
    decompressed contents of a .gz.

    Made under a temporary name and renamed, so a killed run never leaves half a file. A decompressed copy
    takes the source's modification time and is made again whenever the two differ.
    """
    try:
        stamp = src.stat().st_mtime_ns
        target = str(src.resolve())
        if src.suffix != ".gz" and dst.is_symlink() and os.readlink(dst) == target:
            return dst
        if src.suffix == ".gz" and not dst.is_symlink() and dst.is_file() and dst.stat().st_mtime_ns == stamp:
            return dst
    except OSError as e:
        raise DataError(f"{src}: unreadable ({e.__class__.__name__}: {e.strerror or e})") from None
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        if src.suffix != ".gz":
            os.symlink(target, tmp)
        else:
            _decompress(src, tmp)
            os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, dst)
    except OSError as e:
        raise _cannot_write(dst.parent, e) from None
    finally:
        with contextlib.suppress(OSError):  # (in a folder that could not be made, there is nothing to remove)
            tmp.unlink(missing_ok=True)
    return dst


def _decompress(src: Path, tmp: Path) -> None:
    """`src` decompressed into `tmp`, up to the size its IDX header declares: a small .gz that unpacks to
    gigabytes more than that stops there."""
    with open(tmp, "wb") as fout:
        try:
            with gzip.open(src, "rb") as fin:
                head = fin.read(4)
                if len(head) == 4:
                    head += fin.read(4 * head[3])
                fout.write(head)
                if len(head) < 4 or len(head) < 4 + 4 * head[3]:
                    return  # a cut header: check_idx names the problem
                shape, expected = _declared(head)
                left = expected - len(head)
                while left > 0 and (chunk := fin.read(min(left, 1 << 20))):
                    fout.write(chunk)
                    left -= len(chunk)
                if left == 0 and fin.read(1):
                    raise DataError(f"{src}: decompresses to more than the {expected} bytes its header "
                                    f"declares for shape {shape}")
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise
            kind = "truncated gzip stream" if isinstance(e, EOFError) else f"unreadable ({e.__class__.__name__}: {e})"
            raise DataError(f"{src}: {kind}") from None


def _copies(dataset: str, folder: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """The root torchvision reads, and for each of the four files: (the file in `folder`, its copy under
    <root>/<Folder>/raw). torchvision wants all four there, whichever split it reads."""
    root = torchvision_root(folder)
    raw = root / DATASETS[dataset].folder / "raw"
    copies = {}
    for name in FILES:
        src = _file(folder, name)
        if src is None:
            raise DataError(f"{folder}: missing {name}[.gz]")
        copies[name] = (src, _raw_copy(src, raw / name))
    return root, copies


def prepare_raw(dataset: str, folder: Path) -> Path:
    """Make the copies of `folder`'s four files that torchvision reads; returns their root."""
    return _copies(dataset, folder)[0]


def read_dataset(dataset: str, folder: Path, split: str, **kwargs) -> datasets.MNIST:
    """torchvision's dataset of one split, read from the IDX files in `folder` through its cache copies.

    The split's files are checked first (`check_idx`), and the result too (28 x 28 images, as many labels
    as images, labels 0-9): anything wrong is one DataError naming the file. `kwargs` go to torchvision.
    """
    info = DATASETS[dataset]
    root, copies = _copies(dataset, folder)
    paths, shapes = [], []
    for name, magic in zip(SPLITS[split], (IMAGES_MAGIC, LABELS_MAGIC)):
        src, copy = copies[name]
        try:
            shapes.append(check_idx(copy, magic, shown=src))
        except DataError:
            copy.unlink(missing_ok=True)  # our copy of a damaged file: made again once the file is mended
            raise
        paths.append(src)
    # before torchvision reads them (it makes the labels int64, 8 bytes each: a labels file that
    # disagrees with the images would otherwise cost 8 times its size first)
    (count, *size), (labels,) = shapes
    if tuple(size) != (28, 28):
        raise DataError(f"{paths[0]}: images are {'x'.join(map(str, size))}, expected 28x28")
    if count != labels:
        raise DataError(f"{paths[0]}: {count} images but {paths[1].name} has {labels} labels")
    try:
        ds = info.reader(str(root), train=split == "train", download=False, **kwargs)
    except Exception as e:  # torchvision's reader: checked above, so unexpected
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{paths[0]}, {paths[1].name}: torchvision could not read them "
                        f"({e.__class__.__name__}: {detail})") from None
    labels = ds.targets
    if labels.numel() and int(labels.max()) > 9:
        raise DataError(f"{paths[1]}: label {int(labels.max())} outside 0..9")
    return ds


def load_split(folder: Path, split: str, dataset: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 1 x 28 x 28 uint8) and labels (N int64) of one split, read as `read_dataset` reads them."""
    ds = read_dataset(dataset, folder, split)
    return ds.data.unsqueeze(1), ds.targets


# ---------------------------------------------------------------- finding the files


def user_dirs(dataset: str, data_dir: Path) -> list[Path]:
    """The data folder's places for the files, in the order searched."""
    folder = DATASETS[dataset].folder
    return [data_dir / folder / "raw", data_dir / folder, data_dir]


def fallbacks(dataset: str) -> list[tuple[Path, str]]:
    """Copies used when the data folder holds none of the files, in order, each with its name in messages."""
    info = DATASETS[dataset]
    shipped = [(REPO_DATA / info.folder / "raw", "the copy shipped with mnist_lit")]
    return shipped + [(Path(s.folder), s.package) for s in info.system]


def _held(folder: Path) -> list[str]:
    return [name for name in FILES if _file(folder, name)]


def _expected_files() -> str:
    return ", ".join(f"{n}.gz" for n in FILES)


def _where_to_get(dataset: str, target: Path) -> str:
    packages = [s.package.removeprefix("Debian's ").removesuffix(" package") for s in DATASETS[dataset].system]
    also = f", or apt-get install {' '.join(packages)}" if packages else ""
    return f"put {_expected_files()} in {target} (or pass --data.data_dir DIR){also}"


def _put_new(src: Path, dst: Path) -> None:
    """`src` at `dst`, unless a file is there already: one with the same bytes (another job's download) is
    kept, any other is refused rather than replaced."""
    try:
        os.link(src, dst)  # never replaces a file of that name
        return
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: a copy, renamed into place while the name is free
        if not dst.exists():
            tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)
            return
    if dst.read_bytes() != src.read_bytes():
        raise DataError(f"{dst}: a different file of that name is there already; not replaced")


def download(dataset: str, data_dir: Path, timeout: float = 20.0) -> Path:
    """Fetch with torchvision into a temporary folder, then move the complete .gz files into place, never
    over a file that is there already."""
    info = DATASETS[dataset]
    target = data_dir / info.folder / "raw"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen has no timeout of its own
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                info.reader(tmp, train=True, download=True)
            target.mkdir(exist_ok=True)
            # the .gz files only: torchvision also unpacks them, but the copies it reads live in the cache
            for f in sorted((Path(tmp) / info.folder / "raw").glob("*.gz")):
                _put_new(f, target / f.name)
    except DataError:
        raise
    except Exception as e:  # torchvision raises RuntimeError, URLError, socket errors...
        raise DataError(f"{info.folder} not found and the download failed ({e.__class__.__name__}); "
                        f"{_where_to_get(dataset, target)}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return target


def locate(dataset: str, data_dir: str | Path, allow_download: bool = True,
           say: Callable[[str], None] = lambda line: None) -> Path:
    """The folder holding the four IDX files of `dataset`.

    The data folder comes first, in torchvision's layout or flat. A place there that holds some of the four
    files but not all is the user's data, incomplete: one DataError naming what is missing. Only when the
    data folder holds none of them do the shipped copy, a system copy and then a download stand in, and
    `say` gets one line naming which.
    """
    data_dir = Path(data_dir)
    info = DATASETS[dataset]
    for folder in user_dirs(dataset, data_dir):
        held = _held(folder)
        if len(held) == len(FILES):
            return folder
        if held:
            missing = ", ".join(f"{name}[.gz]" for name in FILES if name not in held)
            raise DataError(f"{folder}: holds {len(held)} of the 4 {info.folder} files, missing {missing}; "
                            "add it, or give another --data.data_dir (nothing was read or written)")
    # the data folder as an absolute path: a relative "data" read from a notebook's folder is not the
    # repository's data/, and the line must not read as "no files in data; using .../data/..."
    given = data_dir.absolute()
    for folder, name in fallbacks(dataset):
        if len(_held(folder)) == len(FILES):
            say(f"Data: {info.folder} from {name}, {folder} (the data folder {given} holds none of its files)")
            return folder
    target = data_dir / info.folder / "raw"
    if allow_download:
        say(f"Data: no {info.folder} files in {given}; downloading them with torchvision into {target.absolute()}")
        return download(dataset, data_dir)
    raise DataError(f"{info.folder} not found in {data_dir} or {REPO_DATA} and downloads are off; "
                    f"{_where_to_get(dataset, target)}")


# ---------------------------------------------------------------- batches

class TensorBatches:
    """Batches sliced from tensors already on the training device.

    Shuffled by a permutation seeded with (seed, epoch), so an epoch's order is the same on CPU and GPU
    and after a resume. With `world > 1` each rank takes every world-th sample of the permutation; for
    training the tail is cut so every rank runs the same number of steps (DDP needs that).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, epoch: Callable[[], int] = lambda: 0, rank: int = 0, world: int = 1) -> None:
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.seed, self.epoch, self.rank, self.world = shuffle, seed, epoch, rank, world

    def _num_samples(self) -> int:
        n = len(self.labels)
        if self.world == 1:
            return n
        return n // self.world if self.shuffle else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        return math.ceil(self._num_samples() / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs = len(self.labels), self.batch_size
        if not self.shuffle and self.world == 1:
            for i in range(0, n, bs):  # views, no copy
                yield self.images[i:i + bs], self.labels[i:i + bs]
            return
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch())
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank::self.world][: self._num_samples()].to(self.labels.device)
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            yield self.images[idx], self.labels[idx]


class MNISTDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST, with the validation choices of the Keras tutorials.

    Args:
        dataset: which data set.
        data_dir: your data folder: searched first, and where a download goes (nothing else is written
            there; the uncompressed copies torchvision reads live in mnist_lit's cache folder).
        batch_size: training batch size (the Keras `batch_size`).
        val: "none" (fit on all 60,000), "holdout" (a seeded hold-out of `val_size` from train), or
            "test" (the 10,000 test images, as the TF2 tutorial's `validation_data`).
        val_size: size of the hold-out when `val` is "holdout".
        loader: "memory" (whole split on the training device, fastest) or "torchvision" (DataLoader).
        num_workers: DataLoader workers for the torchvision loader.
        eval_batch_size: batch size for validation, test and predict.
        download: try torchvision's download when no local copy is found.
        seed: seeds the hold-out split and the per-epoch shuffle.
    """

    def __init__(self, dataset: DatasetName = "mnist", data_dir: str = "data", batch_size: PositiveInt = 128,
                 val: Literal["none", "holdout", "test"] = "none", val_size: PositiveInt = 5000,
                 loader: Literal["memory", "torchvision"] = "memory", num_workers: NonNegativeInt = 0,
                 eval_batch_size: PositiveInt = 1000,
                 download: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classes = DATASETS[dataset].classes
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._tv: dict[str, torch.utils.data.Dataset] = {}
        self._source: Path | None = None

    @property
    def source(self) -> Path:
        """The folder the four IDX files are read from, looked up once (see `locate`)."""
        if self._source is None:
            quiet = self.trainer is not None and not self.trainer.is_global_zero  # one line per run, not per rank
            self._source = locate(self.hparams.dataset, self.hparams.data_dir, self.hparams.download,
                                  say=(lambda line: None) if quiet else (lambda line: print(line, flush=True)))
        return self._source

    def prepare_data(self) -> None:
        # once per machine, before any rank's setup: find (or download) the files, make torchvision's copies
        prepare_raw(self.hparams.dataset, self.source)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self._splits or self._tv:
            return
        # torchvision loader: items as 1 x 28 x 28 uint8 tensors; scaling happens on the device
        items = {"transform": transforms.PILToTensor()} if hp.loader == "torchvision" else {}
        train, test = (read_dataset(hp.dataset, self.source, split, **items) for split in ("train", "test"))
        if hp.loader == "torchvision":
            self._setup_torchvision(train, test)
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        splits = {"train": (train.data.unsqueeze(1), train.targets), "test": (test.data.unsqueeze(1), test.targets)}
        if hp.val == "holdout":
            images, labels = splits["train"]
            self._check_val_size(len(labels))
            # the same permutation as random_split's in _setup_torchvision
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(hp.seed))
            val_idx, train_idx = order[: hp.val_size], order[hp.val_size:]
            splits.update(val=(images[val_idx], labels[val_idx]), train=(images[train_idx], labels[train_idx]))
        elif hp.val == "test":
            splits["val"] = splits["test"]
        self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in splits.items()}

    def _setup_torchvision(self, train: datasets.MNIST, test: datasets.MNIST) -> None:
        hp = self.hparams
        if hp.val == "holdout":
            self._check_val_size(len(train))
            g = torch.Generator().manual_seed(hp.seed)
            val, train = torch.utils.data.random_split(train, [hp.val_size, len(train) - hp.val_size], generator=g)
            self._tv["val"] = val
        elif hp.val == "test":
            self._tv["val"] = test
        self._tv.update(train=train, test=test)

    def _check_val_size(self, train_samples: int) -> None:
        if self.hparams.val_size >= train_samples:
            raise UserError(f"data.val_size {self.hparams.val_size} leaves no training data ({train_samples} samples)")

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 10,000 test images (uint8, N x 1 x 28 x 28) and labels, on the CPU, in file order."""
        if "test" in self._splits:
            images, labels = self._splits["test"]
            return images.cpu(), labels.cpu()
        return load_split(self.source, "test", self.hparams.dataset)

    # ------------------------------------------------------------ loaders

    def _loader(self, split: str, train: bool):
        hp = self.hparams
        bs = hp.batch_size if train else hp.eval_batch_size
        if hp.loader == "torchvision":
            g = torch.Generator().manual_seed(hp.seed)
            return torch.utils.data.DataLoader(self._tv[split], batch_size=bs, shuffle=train, generator=g,
                                               num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        epoch = (lambda: trainer.current_epoch) if trainer else (lambda: 0)
        images, labels = self._splits[split]
        return TensorBatches(images, labels, bs, shuffle=train, seed=hp.seed, epoch=epoch, rank=rank, world=world)

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val", train=False) if self.hparams.val != "none" else []

    def test_dataloader(self):
        return self._loader("test", train=False)

    def predict_dataloader(self):
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        return images.float().div_(255), labels  # Keras tutorials: x / 255, no mean/std
