"""MNIST and Fashion-MNIST: torchvision's datasets read in place, checked first, and served as batches.

torchvision's `MNIST` / `FashionMNIST` read the uncompressed IDX files of <data_dir>/<MNIST|FashionMNIST>/raw
(the repo ships both data sets there, in data/, as .gz). `prepare_data` decompresses each .gz beside
itself, once, through atomic.py: torchvision extracts only what it downloaded itself, and a killed
extraction of its own leaves half a file that it then reads as whole. Files are added there, never
replaced or deleted. Every file is checked first (`check_idx`, `_check_split`): a damaged one is a
one-line error naming it, where torchvision stops on a bare assertion.

Two input paths share one contract (uint8 batches of N x 1 x 28 x 28 images and int64 labels, scaled to
[0, 1] on the training device in `on_after_batch_transfer`):
- "memory" (default): the datasets' `.data` / `.targets` held once on the training device, sliced per batch.
- "torchvision": the same datasets, item by item, through a `DataLoader`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torchvision import datasets, transforms

from mnist_lit.atomic import write_bytes_from
from mnist_lit.errors import UserError, check_choice, check_positive, described

SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
# uint8 type code, then 3 or 1 dimensions
MAGIC = {name: magic for pair in SPLITS.values() for name, magic in zip(pair, (0x0803, 0x0801))}
FILES = tuple(MAGIC)


@dataclass(frozen=True)
class DatasetInfo:
    reader: type[datasets.MNIST]  # torchvision's dataset class: file layout, reader and class names

    @property
    def folder(self) -> str:  # torchvision's folder name under the data root
        return self.reader.__name__

    @property
    def classes(self) -> tuple[str, ...]:
        # torchvision's names; its MNIST names read "7 - seven", Keras and mnist_lit print the digit
        return tuple(name.split(" - ")[0] for name in self.reader.classes)


DATASETS = {"mnist": DatasetInfo(datasets.MNIST), "fashion_mnist": DatasetInfo(datasets.FashionMNIST)}
DatasetName = Literal["mnist", "fashion_mnist"]


class DataError(UserError):
    """A data file is missing or is not a valid IDX file."""


# ---------------------------------------------------------------- IDX files


def check_idx(path: Path, magic: int, head: bytes | None = None, size: int | None = None) -> tuple[int, ...]:
    """Raise a one-line DataError naming `path` if an uncompressed IDX file has the wrong magic number, a
    cut header, or a length that does not match its shape; else return its shape. `head` (its first 16
    bytes) and `size`: a file's read already (`_gunzip`'s)."""
    try:
        if head is None:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(16)
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.__class__.__name__}: {e.strerror or e})") from None
    found = int.from_bytes(head[:4], "big")
    if size < 4:
        raise DataError(f"{path}: too short to be an IDX file ({size} bytes)")
    if found != magic:
        raise DataError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    if size < 4 + 4 * (magic & 0xFF):
        raise DataError(f"{path}: truncated header")
    shape, expected = _declared(head)
    if size != expected:
        state = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: {size} bytes for shape {shape}, expected {expected}")
    return shape


def _declared(head: bytes) -> tuple[tuple[int, ...], int]:
    """The shape a uint8 IDX header declares (its fourth byte counts the dimensions) and the file's size."""
    header = 4 + 4 * head[3]
    shape = tuple(int.from_bytes(head[i: i + 4], "big") for i in range(4, header, 4))
    return shape, header + math.prod(shape)


def _gunzip(gz: Path, magic: int) -> bytearray:
    """The IDX file inside `gz` (errors name the .gz), read no further than its header declares and a
    byte: a small .gz that unpacks to gigabytes more stops there. `_check_split` checks the rest."""
    header = 4 + 4 * (magic & 0xFF)
    try:
        with gzip.open(gz, "rb") as f:
            out = bytearray(f.read(header))
            if len(out) < header or int.from_bytes(out[:4], "big") != magic:
                check_idx(gz, magic, bytes(out), len(out))  # too short, wrong magic or a cut header: raises
            shape, expected = _declared(out)
            while len(out) <= expected and (chunk := f.read(min(expected + 1 - len(out), 1 << 20))):
                out += chunk
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        kind = "truncated gzip stream" if isinstance(e, EOFError) else f"unreadable ({e.__class__.__name__}: {e})"
        raise DataError(f"{gz}: {kind}") from None
    if len(out) > expected:
        raise DataError(f"{gz}: decompresses to more than the {expected} bytes its header declares for shape {shape}")
    return out


def _check_split(raw: Path, split: str, made: dict[str, bytearray] | None = None) -> list[Path]:
    """The split's images and labels files checked (`check_idx`) and checked together (28 x 28 images, as
    many labels as images, labels 0-9): anything wrong is one DataError naming the file. `made`: files
    decompressed and not written yet, named by their .gz. Returns the two paths."""
    made, paths, shapes = made or {}, [], []
    for name in SPLITS[split]:
        paths.append(raw / f"{name}.gz" if name in made else raw / name)
        body = made.get(name)
        shapes.append(check_idx(paths[-1], MAGIC[name], *(() if body is None else (bytes(body[:16]), len(body)))))
    (count, *size), (labels,) = shapes
    if tuple(size) != (28, 28):
        raise DataError(f"{paths[0]}: images are {'x'.join(map(str, size))}, expected 28x28")
    if count != labels:
        raise DataError(f"{paths[0]}: {count} images but {paths[1].name} has {labels} labels")
    labels = made[SPLITS[split][1]] if SPLITS[split][1] in made else paths[1].read_bytes()
    if count and max(labels[8:]) > 9:
        raise DataError(f"{paths[1]}: label {max(labels[8:])} outside 0..9")
    return paths


# ---------------------------------------------------------------- the data folder, in torchvision's layout


def _where(raw: Path) -> str:
    return f"put {', '.join(f'{n}.gz' for n in FILES)} in {raw}, or pass --data.data_dir DIR"


def _held(raw: Path) -> list[str]:
    return [name for name in FILES if (raw / name).is_file() or (raw / f"{name}.gz").is_file()]


def find(dataset: str, data_dir: str | Path, download: bool = False) -> Path:
    """<data_dir>/<MNIST|FashionMNIST>/raw (absolute: a message says which "data" it means), if it holds each
    of the four files, uncompressed or .gz (or, with `download`, none of them): else one DataError saying
    what is missing, before anything is read or written."""
    folder = DATASETS[dataset].folder
    raw = (Path(data_dir) / folder / "raw").absolute()
    held = _held(raw)
    if not held and not download:
        raise DataError(f"{raw}: no {folder} files; {_where(raw)}")
    if held and len(held) < len(FILES):
        missing = ", ".join(f"{name}[.gz]" for name in FILES if name not in held)
        raise DataError(f"{raw}: holds {len(held)} of the 4 {folder} files, missing {missing}; "
                        "add it, or give another --data.data_dir (nothing was read or written)")
    return raw


def prepare(dataset: str, data_dir: str | Path, download: bool = False) -> Path:
    """`prepare_data`: `find`; torchvision's download if the folder holds no files and `download`; each .gz
    without its uncompressed file decompressed beside it. Returns the raw folder.

    An uncompressed file already there is the one torchvision reads (its rule too): after replacing a .gz,
    delete the old uncompressed file beside it."""
    raw = find(dataset, data_dir, download)
    if not _held(raw):
        _download(DATASETS[dataset], raw)
    made = {name: _gunzip(raw / f"{name}.gz", magic) for name, magic in MAGIC.items() if not (raw / name).is_file()}
    for split in SPLITS:  # all four checked before anything is written
        _check_split(raw, split, made)
    for name, body in made.items():
        try:
            write_bytes_from(raw / name, lambda f: f.write(body))
        except UserError as e:  # a read-only data folder: one line, and the way out
            raise DataError(f"{e}; torchvision reads only uncompressed files: gunzip -k the .gz files "
                            "there, or copy the folder somewhere writable and pass --data.data_dir") from None
    return raw


def _download(info: DatasetInfo, raw: Path) -> None:
    """torchvision's download (its mirrors and md5 checks) in a temporary folder, then the .gz files moved
    into `raw`: torchvision writes and extracts in place, where a killed download would leave a cut file.
    No timeout of ours: torchvision's urlopen has none, and a process-wide one would reach every socket."""
    print(f"Data: no {info.folder} files in {raw}; downloading them with torchvision", flush=True)
    try:
        raw.parent.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=raw.parent.parent, prefix=".download-") as tmp:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                info.reader(tmp, download=True)  # (its progress bars and per-mirror errors: not shown)
            raw.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                if not (raw / f"{name}.gz").exists():  # else another job's download, md5-checked as this one
                    os.replace(Path(tmp) / info.folder / "raw" / f"{name}.gz", raw / f"{name}.gz")
    except Exception as e:  # torchvision's RuntimeError ends in the last mirror's error; OSError...
        reason = (str(e).strip().splitlines() or [""])[-1][:120]
        raise DataError(f"{raw}: no {info.folder} files, and torchvision's download failed "
                        f"({e.__class__.__name__}: {reason}); {_where(raw)}") from None


def read_dataset(dataset: str, data_dir: str | Path, split: str, **kwargs) -> datasets.MNIST:
    """torchvision's dataset of one split, read in place from the files `prepare` left, once `_check_split`
    has checked them. `kwargs` go to torchvision."""
    info, raw = DATASETS[dataset], find(dataset, data_dir)
    # torchvision (0.29.1) reads <root>/<Folder>/processed/{training,test}.pt, the format it wrote before
    # 0.9, in place of raw/ whenever both are there: the files checked here would not be the ones read
    processed = raw.parent / "processed"
    if all((processed / name).is_file() for name in (info.reader.training_file, info.reader.test_file)):
        raise DataError(f"{processed}: an old torchvision's copy, which torchvision reads instead of {raw} "
                        "(unchecked, perhaps stale); move it away")
    for path in (raw / name for name in FILES):  # torchvision wants all four, whichever split it reads
        if not path.is_file():
            raise DataError(f"{path}: missing; prepare_data() decompresses {path.name}.gz there first")
    # checked before torchvision reads them (it makes the labels int64, 8 bytes each: a labels file that
    # disagrees with the images would otherwise cost 8 times its size first)
    paths = _check_split(raw, split)
    try:
        ds = info.reader(str(raw.parent.parent), train=split == "train", download=False, **kwargs)
    except Exception as e:  # torchvision's reader: checked above, so unexpected
        raise DataError(f"{paths[0]}, {paths[1].name}: torchvision could not read them ({described(e)})") from None
    return ds


def load_split(data_dir: str | Path, split: str, dataset: str = "mnist") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N x 1 x 28 x 28 uint8) and labels (N int64) of one split of the files at hand."""
    prepare(dataset, data_dir)
    return _tensors(read_dataset(dataset, data_dir, split))


def _tensors(ds: datasets.MNIST | torch.utils.data.Subset) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset's images (N x 1 x 28 x 28 uint8) and labels, or those of the part random_split took."""
    if isinstance(ds, torch.utils.data.Subset):
        return ds.dataset.data[ds.indices].unsqueeze(1), ds.dataset.targets[ds.indices]
    return ds.data.unsqueeze(1), ds.targets


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
        data_dir: the folder holding <MNIST|FashionMNIST>/raw, as torchvision lays it out (`data`: the
            repo's shipped files, from the repo root). `prepare_data` adds the uncompressed files there.
        batch_size: training batch size (the Keras `batch_size`).
        val: "none" (fit on all 60,000), "holdout" (a seeded hold-out of `val_size` from train), or
            "test" (the 10,000 test images, as the TF2 tutorial's `validation_data`).
        val_size: size of the hold-out when `val` is "holdout".
        loader: "memory" (whole split on the training device, fastest) or "torchvision" (DataLoader).
        num_workers: DataLoader workers for the torchvision loader.
        eval_batch_size: batch size for validation, test and predict.
        download: torchvision's download, when the data folder holds none of the files (offline: one line
            saying where to put them).
        seed: seeds the hold-out split and the per-epoch shuffle.
    """

    def __init__(self, dataset: DatasetName = "mnist", data_dir: str = "data", batch_size: PositiveInt = 128,
                 val: Literal["none", "holdout", "test"] = "none", val_size: PositiveInt = 5000,
                 loader: Literal["memory", "torchvision"] = "memory", num_workers: NonNegativeInt = 0,
                 eval_batch_size: PositiveInt = 1000,
                 download: bool = True, seed: int = 0) -> None:
        super().__init__()
        check_choice("dataset", dataset, DATASETS)
        check_choice("val", val, ("none", "holdout", "test"))
        check_choice("loader", loader, ("memory", "torchvision"))
        for name, value in (("batch_size", batch_size), ("val_size", val_size), ("eval_batch_size", eval_batch_size)):
            check_positive(name, value)
        check_positive("num_workers", num_workers, zero=True)
        self.save_hyperparameters()
        self.classes = DATASETS[dataset].classes
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._tv: dict[str, torch.utils.data.Dataset] = {}

    @property
    def source(self) -> Path:
        """The folder the four IDX files are read from; one DataError if it holds some but not all (`find`)."""
        return find(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)

    def prepare_data(self) -> None:
        # Lightning calls it once per machine, before any rank's setup: what writes to disk goes here
        prepare(self.hparams.dataset, self.hparams.data_dir, self.hparams.download)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if self._splits or self._tv:
            return
        # torchvision loader: items as 1 x 28 x 28 uint8 tensors; scaling happens on the device
        items = {"transform": transforms.PILToTensor()} if hp.loader == "torchvision" else {}
        train, test = (read_dataset(hp.dataset, hp.data_dir, split, **items) for split in ("train", "test"))
        splits = {"train": train, "test": test, **({"val": test} if hp.val == "test" else {})}
        if hp.val == "holdout":
            if hp.val_size >= len(train):
                raise UserError(f"data.val_size {hp.val_size} leaves no training data ({len(train)} samples)")
            g = torch.Generator().manual_seed(hp.seed)
            splits["val"], splits["train"] = torch.utils.data.random_split(
                train, [hp.val_size, len(train) - hp.val_size], generator=g)
        if hp.loader == "torchvision":
            self._tv = splits
            return
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self._splits = {k: tuple(t.to(device) for t in _tensors(ds)) for k, ds in splits.items()}

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The 10,000 test images (uint8, N x 1 x 28 x 28) and labels, on the CPU, in file order."""
        self.setup("test")  # (nothing to do after a fit or test)
        images, labels = self._splits["test"] if self._splits else _tensors(self._tv["test"])
        return images.cpu(), labels.cpu()

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
