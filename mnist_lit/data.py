"""MNIST and Fashion-MNIST: finding the IDX files, checking them, and serving batches to Lightning.

Two input paths share one contract (uint8 batches of N x 1 x 28 x 28 images and int64 labels, scaled to
[0, 1] on the training device in `on_after_batch_transfer`):
- "memory" (default): the whole split held once as a tensor on the training device and sliced per batch.
- "torchvision": torchvision's `MNIST` / `FashionMNIST` datasets through a `DataLoader`.
"""

from __future__ import annotations

import contextlib
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
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt

from mnist_lit.engine import StepGroups, is_group, steps_per_batch
from mnist_lit.errors import UserError

REPO_DATA = Path(__file__).resolve().parent.parent / "data"
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801  # uint8 type code, then 3 or 1 dimensions


@dataclass(frozen=True)
class DatasetInfo:
    folder: str  # torchvision's folder name under the data root
    classes: tuple[str, ...]
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by an OS package


DATASETS = {
    "mnist": DatasetInfo("MNIST", tuple(str(d) for d in range(10))),
    # class names from the Fashion-MNIST README (Xiao, Rasul, Vollgraf 2017)
    "fashion_mnist": DatasetInfo(
        "FashionMNIST",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian's dataset-fashion-mnist
    ),
}
DatasetName = Literal["mnist", "fashion_mnist"]


class DataError(UserError):
    """A data file is missing or is not a valid IDX file."""


# ---------------------------------------------------------------- IDX files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        kind = "truncated gzip stream" if isinstance(e, EOFError) else f"unreadable ({e.__class__.__name__}: {e})"
        raise DataError(f"{path}: {kind}") from None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one IDX file (plain or .gz) into a uint8 array, checking magic number and length."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: {len(raw)} bytes for shape {shape}, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 1 x 28 x 28 uint8) and labels (N int64) of one split from a folder of IDX files."""
    img_name, lbl_name = SPLITS[split]
    img_path, lbl_path = _file(folder, img_name), _file(folder, lbl_name)
    if img_path is None or lbl_path is None:
        raise DataError(f"{folder}: missing {img_name if img_path is None else lbl_name}[.gz]")
    images, labels = read_idx(img_path, IMAGES_MAGIC), read_idx(lbl_path, LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise DataError(f"{img_path}: {len(images)} images but {lbl_path.name} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_path}: label {int(labels.max())} outside 0..9")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


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
    from torchvision import datasets

    info = DATASETS[dataset]
    target = data_dir / info.folder / "raw"
    target.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # torchvision's urlopen has no timeout of its own
    try:
        with tempfile.TemporaryDirectory(dir=data_dir, prefix=".download-") as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                getattr(datasets, info.folder)(tmp, train=True, download=True)
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


def _atomic_decompress(src: Path, dst: Path) -> None:
    """Write `dst` under a temporary name and rename it, so a killed run never leaves half a file."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def torchvision_root(dataset: str, source: Path, data_dir: Path) -> Path:
    """A root that torchvision's dataset class accepts: uncompressed files under <root>/<Folder>/raw."""
    info = DATASETS[dataset]
    raw = data_dir / info.folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for pair in SPLITS.values():
        for name in pair:
            if not (raw / name).is_file():
                _atomic_decompress(_file(source, name), raw / name)
    return data_dir


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
        # runs once per machine: finds or downloads the files and, for torchvision, decompresses them
        source = self.source
        if self.hparams.loader == "torchvision":
            torchvision_root(self.hparams.dataset, source, Path(self.hparams.data_dir))

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if hp.loader == "torchvision":
            self._setup_torchvision()
            return
        if self._splits:
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        source = self.source
        train, test = load_split(source, "train"), load_split(source, "test")
        if hp.val == "holdout":
            self._check_val_size(len(train[1]))
            order = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(hp.seed))
            val_idx, train_idx = order[: hp.val_size], order[hp.val_size:]
            self._splits["val"] = (train[0][val_idx], train[1][val_idx])
            train = (train[0][train_idx], train[1][train_idx])
        elif hp.val == "test":
            self._splits["val"] = test
        self._splits.update(train=train, test=test)
        self._splits = {k: (x.to(device), y.to(device)) for k, (x, y) in self._splits.items()}

    def _setup_torchvision(self) -> None:
        from torchvision import datasets, transforms

        hp = self.hparams
        root = Path(hp.data_dir)
        cls = getattr(datasets, DATASETS[hp.dataset].folder)
        to_uint8 = transforms.PILToTensor()  # 1 x 28 x 28 uint8: scaling happens on the device
        train = cls(root, train=True, transform=to_uint8)
        test = cls(root, train=False, transform=to_uint8)
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
        return load_split(self.source, "test")

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
