"""MNIST and Fashion-MNIST: finding the IDX files, reading them with torchvision, and serving batches.

torchvision's `MNIST` / `FashionMNIST` datasets read the files and name the classes. They read only
uncompressed files under <root>/<MNIST|FashionMNIST>/raw, so compressed or elsewhere-installed copies are
decompressed into the data folder first (once; atomically). Before torchvision reads a file, `check_idx`
turns a damaged one into a one-line error naming it (torchvision stops on a bare assertion).

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
import io
import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torchvision import datasets, transforms

from mnist_lit.engine import StepGroups, is_group, steps_per_batch
from mnist_lit.errors import UserError

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801  # uint8 type code, then 3 or 1 dimensions


@dataclass(frozen=True)
class DatasetInfo:
    reader: type[datasets.MNIST]  # torchvision's dataset class: file layout, reader and class names
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by an OS package

    @property
    def folder(self) -> str:  # torchvision's folder name under the data root
        return self.reader.__name__

    @property
    def classes(self) -> tuple[str, ...]:
        # torchvision's names; its MNIST names read "7 - seven", Keras and mnist_lit print the digit
        return tuple(name.split(" - ")[0] for name in self.reader.classes)


DATASETS = {
    "mnist": DatasetInfo(datasets.MNIST),
    "fashion_mnist": DatasetInfo(datasets.FashionMNIST,
                                 system_dirs=("/usr/share/datasets/fashion-mnist",)),  # Debian's package
}
DatasetName = Literal["mnist", "fashion_mnist"]


class DataError(UserError):
    """A data file is missing or is not a valid IDX file."""


# ---------------------------------------------------------------- IDX files


def check_idx(path: Path, magic: int, shown: Path | None = None) -> None:
    """Raise a one-line DataError if an uncompressed IDX file has the wrong magic number, a cut header, or
    a length that does not match its shape. `shown`: the file to name (the user's, not our copy)."""
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
    header = 4 + 4 * (magic & 0xFF)
    if size < header:
        raise DataError(f"{shown}: truncated header")
    shape = tuple(int.from_bytes(head[i: i + 4], "big") for i in range(4, header, 4))
    expected = header + math.prod(shape)
    if size != expected:
        state = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{shown}: {state}: {size} bytes for shape {shape}, expected {expected}")


def _file(folder: Path, name: str) -> Path | None:
    # the .gz first: beside it, an uncompressed file of the same name is our copy for torchvision
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _raw_copy(src: Path, dst: Path) -> Path:
    """`dst`, an uncompressed copy of `src` (.gz or not) for torchvision, unless `src` is that file already.

    Written under a temporary name and renamed, so a killed run never leaves half a file. The copy takes
    the source's modification time and is made again whenever the two differ.
    """
    try:
        stamp = src.stat().st_mtime_ns
        if _same(src, dst) or (dst.is_file() and dst.stat().st_mtime_ns == stamp):
            return dst
    except OSError as e:
        raise DataError(f"{src}: unreadable ({e.__class__.__name__}: {e.strerror or e})") from None
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")

    def cannot_write(e: OSError) -> DataError:
        return DataError(f"{dst.parent}: cannot write the uncompressed copy torchvision reads "
                         f"({e.strerror or e.__class__.__name__}); use another data folder (--data.data_dir)")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fout = open(tmp, "wb")
    except OSError as e:
        raise cannot_write(e) from None
    try:
        try:
            with fout, (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as fin:
                shutil.copyfileobj(fin, fout)
        except (EOFError, gzip.BadGzipFile, OSError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise cannot_write(e) from None
            kind = "truncated gzip stream" if isinstance(e, EOFError) else f"unreadable ({e.__class__.__name__}: {e})"
            raise DataError(f"{src}: {kind}") from None
        try:
            os.utime(tmp, ns=(stamp, stamp))
            os.replace(tmp, dst)
        except OSError as e:
            raise cannot_write(e) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _copies(dataset: str, folder: Path, root: Path) -> dict[str, tuple[Path, Path]]:
    """For each of the four files: (the file in `folder`, its uncompressed copy under <root>/<Folder>/raw).
    torchvision wants all four there, whichever split it reads."""
    raw = root / DATASETS[dataset].folder / "raw"
    copies = {}
    for name in (name for pair in SPLITS.values() for name in pair):
        src = _file(folder, name)
        if src is None:
            raise DataError(f"{folder}: missing {name}[.gz]")
        copies[name] = (src, _raw_copy(src, raw / name))
    return copies


def prepare_raw(dataset: str, folder: Path, root: Path) -> None:
    """Make the uncompressed copies of `folder`'s four files that torchvision reads under `root`."""
    _copies(dataset, folder, root)


def read_dataset(dataset: str, folder: Path, split: str, root: Path, **kwargs) -> datasets.MNIST:
    """torchvision's dataset of one split, read from the IDX files in `folder` through <root>/<Folder>/raw.

    The split's files are checked first (`check_idx`), and the result too (28 x 28 images, as many labels
    as images, labels 0-9): anything wrong is one DataError naming the file. `kwargs` go to torchvision.
    """
    info = DATASETS[dataset]
    copies = _copies(dataset, folder, root)
    paths = []
    for name, magic in zip(SPLITS[split], (IMAGES_MAGIC, LABELS_MAGIC)):
        src, copy = copies[name]
        try:
            check_idx(copy, magic, shown=src)
        except DataError:
            if not _same(copy, src):
                copy.unlink(missing_ok=True)  # a copy of a damaged file: made again once the file is mended
            raise
        paths.append(src)
    legacy = root / info.folder / "processed"
    if legacy.exists():  # torchvision would read its old .pt files there instead of the checked IDX files
        raise DataError(f"{legacy}: an old torchvision cache that would be read instead of the IDX files; remove it")
    try:
        ds = info.reader(str(root), train=split == "train", download=False, **kwargs)
    except Exception as e:  # torchvision's reader: checked above, so unexpected
        detail = (str(e).strip().splitlines() or [""])[0][:120]
        raise DataError(f"{paths[0]}, {paths[1].name}: torchvision could not read them "
                        f"({e.__class__.__name__}: {detail})") from None
    images, labels = ds.data, ds.targets
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"{paths[0]}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{paths[0]}: {len(images)} images but {paths[1].name} has {len(labels)} labels")
    if labels.numel() and int(labels.max()) > 9:
        raise DataError(f"{paths[1]}: label {int(labels.max())} outside 0..9")
    return ds


def load_split(folder: Path, split: str, dataset: str = "mnist", root: Path | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 1 x 28 x 28 uint8) and labels (N int64) of one split, read as `read_dataset` reads them.

    Without a `root`, uncompressed copies are made in a temporary folder and removed again.
    """
    if root is not None:
        ds = read_dataset(dataset, folder, split, root)
        return ds.data.unsqueeze(1), ds.targets
    with tempfile.TemporaryDirectory(prefix="mnist_lit-") as tmp:
        ds = read_dataset(dataset, folder, split, Path(tmp))
        return ds.data.unsqueeze(1), ds.targets


# ---------------------------------------------------------------- finding the files


def _complete(folder: Path) -> bool:
    return all(_file(folder, name) for pair in SPLITS.values() for name in pair)


def candidate_dirs(dataset: str, data_dir: Path) -> list[Path]:
    """Folders searched, in order: the data folder, the repo's shipped copy, system copies."""
    info = DATASETS[dataset]
    user = [data_dir / info.folder / "raw", data_dir / info.folder, data_dir]
    return user + [REPO_DATA / info.folder / "raw"] + [Path(d) for d in info.system_dirs]


def _expected_files() -> str:
    return ", ".join(f"{n}.gz" for pair in SPLITS.values() for n in pair)


def download(dataset: str, data_dir: Path, timeout: float = 20.0) -> Path:
    """Fetch with torchvision into a temporary folder, then move the complete files into place."""
    info = DATASETS[dataset]
    target = data_dir / info.folder / "raw"
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen has no timeout of its own
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                info.reader(tmp, train=True, download=True)
            target.mkdir(exist_ok=True)
            for f in (Path(tmp) / info.folder / "raw").iterdir():
                os.replace(f, target / f.name)
    except Exception as e:  # torchvision raises RuntimeError, URLError, socket errors...
        raise DataError(
            f"{info.folder} not found and the download failed ({e.__class__.__name__}); "
            f"put {_expected_files()} in {target} (or pass --data.data_dir DIR)"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return target


def locate(dataset: str, data_dir: str | Path, allow_download: bool = True) -> Path:
    """The first folder holding all four IDX files of `dataset`, downloading as a last resort."""
    data_dir = Path(data_dir)
    for folder in candidate_dirs(dataset, data_dir):
        if _complete(folder):
            return folder
    if allow_download:
        return download(dataset, data_dir)
    info = DATASETS[dataset]
    raise DataError(
        f"{info.folder} not found in {data_dir} or {REPO_DATA} and downloads are off; "
        f"put {_expected_files()} in {data_dir / info.folder / 'raw'}"
    )


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
        data_dir: your data folder; searched first, and where decompressed copies and downloads go.
        batch_size: training batch size (the Keras `batch_size`).
        val: "none" (fit on all 60,000), "holdout" (a seeded hold-out of `val_size` from train), or
            "test" (the 10,000 test images, as the TF2 tutorial's `validation_data`).
        val_size: size of the hold-out when `val` is "holdout".
        loader: "memory" (whole split on the training device, fastest) or "torchvision" (DataLoader).
        num_workers: DataLoader workers for the torchvision loader.
        steps_per_execution: optimizer steps per Lightning batch with the memory loader, like Keras'
            `steps_per_execution` (same updates, fewer trips through Lightning's loop); 0 picks about
            1024 samples per Lightning batch. Off when limit_train_batches / val_check_interval /
            fast_dev_run count batches, or gradient clipping / accumulation need Lightning's automatic loop.
        eval_batch_size: batch size for validation, test and predict.
        download: try torchvision's download when no local copy is found.
        seed: seeds the hold-out split and the per-epoch shuffle.
    """

    def __init__(self, dataset: DatasetName = "mnist", data_dir: str = "data", batch_size: PositiveInt = 128,
                 val: Literal["none", "holdout", "test"] = "none", val_size: PositiveInt = 5000,
                 loader: Literal["memory", "torchvision"] = "memory", num_workers: NonNegativeInt = 0,
                 steps_per_execution: NonNegativeInt = 0, eval_batch_size: PositiveInt = 1000,
                 download: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classes = DATASETS[dataset].classes
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._tv: dict[str, torch.utils.data.Dataset] = {}

    @property
    def source(self) -> Path:
        return locate(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)

    def prepare_data(self) -> None:
        # once per machine, before any rank's setup: find (or download) the files, copy them for torchvision
        prepare_raw(self.hparams.dataset, self.source, Path(self.hparams.data_dir))

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self._splits or self._tv:
            return
        source, root = self.source, Path(hp.data_dir)
        # torchvision loader: items as 1 x 28 x 28 uint8 tensors; scaling happens on the device
        items = {"transform": transforms.PILToTensor()} if hp.loader == "torchvision" else {}
        train, test = (read_dataset(hp.dataset, source, split, root, **items) for split in ("train", "test"))
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
        return load_split(self.source, "test", self.hparams.dataset, Path(self.hparams.data_dir))

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
        batches = TensorBatches(images, labels, bs, shuffle=train, seed=hp.seed, epoch=epoch, rank=rank, world=world)
        k = steps_per_batch(trainer, hp.steps_per_execution, bs) if train else 1
        return StepGroups(batches, k) if k > 1 else batches

    def train_dataloader(self):
        return self._loader("train", train=True)

    def val_dataloader(self):
        return self._loader("val", train=False) if self.hparams.val != "none" else []

    def test_dataloader(self):
        return self._loader("test", train=False)

    def predict_dataloader(self):
        return self._loader("test", train=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if is_group(batch):
            return [self.on_after_batch_transfer(b, dataloader_idx) for b in batch]
        images, labels = batch
        return images.float().div_(255), labels  # Keras tutorials: x / 255, no mean/std
