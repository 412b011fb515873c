"""IDX checks, the data lookup order, and the batches both input paths serve."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import pytest
import torch

from mnist_lit import data
from mnist_lit.data import DataError, MNISTDataModule, TensorBatches, load_split, locate
from tests.helpers import TEST, TRAIN, idx_bytes, synthetic_split, write_idx_folder

SHIPPED_MD5 = {  # ../shared/data/README.md, the MNIST database as distributed
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_shipped_mnist_is_the_real_database():
    for name, md5 in SHIPPED_MD5.items():
        with gzip.open(data.REPO_DATA / "MNIST" / "raw" / f"{name}.gz") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, name


# ---------------------------------------------------------------- IDX errors name the file and the problem


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_idx_folder(tmp_path / "raw", gz=False)


def test_reads_plain_and_gzip_files_alike(tmp_path: Path):
    plain = load_split(write_idx_folder(tmp_path / "a", gz=False), "train")
    packed = load_split(write_idx_folder(tmp_path / "b", gz=True), "train")
    assert plain[0].shape == (TRAIN, 1, 28, 28) and plain[0].dtype == torch.uint8
    assert plain[1].dtype == torch.int64
    assert torch.equal(plain[0], packed[0]) and torch.equal(plain[1], packed[1])


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-100], "truncated"),
    (lambda b: b + b"\0\0", "trailing bytes"),
    (lambda b: (0x0801).to_bytes(4, "big") + b[4:], "wrong magic number 0x00000801"),
    (lambda b: b[:10], "truncated header"),
    (lambda b: b"", "too short"),
])
def test_damaged_image_file(folder: Path, damage, message):
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_split(folder, "train")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip(tmp_path: Path):
    folder = write_idx_folder(tmp_path / "raw")
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated gzip stream"):
        load_split(folder, "test")


def test_not_gzip(tmp_path: Path):
    folder = write_idx_folder(tmp_path / "raw")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"hello, I am not compressed at all")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: unreadable"):
        load_split(folder, "test")


def test_image_and_label_counts_must_agree(folder: Path):
    _, labels = synthetic_split(TEST - 1, 5)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(DataError, match=f"{TEST} images but t10k-labels-idx1-ubyte has {TEST - 1} labels"):
        load_split(folder, "test")


def test_labels_outside_0_to_9(folder: Path):
    _, labels = synthetic_split(TEST, 1)
    labels[3] = 12
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(DataError, match="label 12 outside 0..9"):
        load_split(folder, "test")


def test_images_must_be_28x28(folder: Path):
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(torch.zeros(TEST, 32, 32).numpy(), 0x803))
    with pytest.raises(DataError, match="images are 32x32"):
        load_split(folder, "test")


# ---------------------------------------------------------------- where the files are found


@pytest.fixture
def nothing_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """No shipped copy and no system copy (this machine may have Debian's dataset-fashion-mnist)."""
    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "no-shipped-data")
    for name, info in data.DATASETS.items():
        monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(info, system=()))


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_lookup_prefers_the_data_folder(data_root: Path):
    said = []
    assert locate("mnist", data_root, say=said.append) == data_root / "MNIST" / "raw"
    assert said == [], "the user's own folder needs no word"


@pytest.mark.parametrize("layout", ["flat", "folder", "raw"])
def test_data_folder_layouts(tmp_path: Path, layout: str):
    where = {"flat": tmp_path, "folder": tmp_path / "MNIST", "raw": tmp_path / "MNIST" / "raw"}[layout]
    write_idx_folder(where)
    assert locate("mnist", tmp_path) == where


def test_lookup_falls_back_to_shipped_copy_and_says_so(tmp_path: Path):
    said = []
    assert locate("mnist", tmp_path / "empty", say=said.append) == data.REPO_DATA / "MNIST" / "raw"
    assert said == [f"Data: MNIST from the copy shipped with mnist_lit, {data.REPO_DATA / 'MNIST' / 'raw'} "
                    f"(the data folder {tmp_path / 'empty'} holds none of its files)"]


def test_lookup_uses_system_copy_of_fashion_and_says_so(tmp_path: Path, monkeypatch, nothing_shipped):
    system = write_idx_folder(tmp_path / "usr-share-datasets-fashion-mnist")
    info = dataclasses.replace(data.DATASETS["fashion_mnist"], system=(
        data.SystemCopy("/nonexistent", "nothing"), data.SystemCopy(str(system), "Debian's dataset-fashion-mnist package")))
    monkeypatch.setitem(data.DATASETS, "fashion_mnist", info)
    said = []
    assert locate("fashion_mnist", tmp_path / "empty", say=said.append) == system
    assert len(said) == 1 and "Debian's dataset-fashion-mnist package" in said[0] and str(system) in said[0]


def test_a_download_says_so_and_writes_only_new_files(tmp_path: Path, monkeypatch, nothing_shipped):
    """A stand-in for torchvision's download (none reaches the internet here): it writes the four .gz files
    and their unpacked copies; the data folder gets the .gz files and nothing else."""
    def fetch(self, *args, **kwargs):
        write_idx_folder(Path(self.raw_folder))
        write_idx_folder(Path(self.raw_folder), gz=False)

    monkeypatch.setattr(data.datasets.MNIST, "download", fetch)
    said = []
    folder = locate("mnist", tmp_path / "d", say=said.append)
    assert folder == tmp_path / "d" / "MNIST" / "raw"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)
    assert said == [f"Data: no MNIST files in {tmp_path / 'd'}; downloading them with torchvision into {folder}"]
    assert not list((tmp_path / "d").glob(".download-*")), "temporary download folder left behind"


def test_a_download_keeps_a_file_another_job_fetched_and_refuses_a_different_one(tmp_path: Path):
    """Moving a fetched file into place never replaces a file: the same bytes are kept, others refused."""
    raw = write_idx_folder(tmp_path / "fetched")
    same = tmp_path / "d" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    same.parent.mkdir(parents=True)
    same.write_bytes((raw / same.name).read_bytes())  # another job's download, a moment earlier
    data._put_new(raw / same.name, same)  # the same bytes: kept, no error
    other = tmp_path / "e" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"the user's own")
    with pytest.raises(DataError, match="a different file of that name is there already; not replaced"):
        data._put_new(raw / other.name, other)
    assert other.read_bytes() == b"the user's own"


def test_offline_download_fails_in_one_line(tmp_path: Path, no_download, nothing_shipped):
    with pytest.raises(DataError) as e:
        locate("fashion_mnist", tmp_path / "d")
    message = str(e.value)
    assert "\n" not in message and "download failed (URLError)" in message
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "d" / "FashionMNIST" / "raw") in message
    assert not list((tmp_path / "d").glob(".download-*")), "temporary download folder left behind"


def test_fashion_not_found_names_the_debian_package(tmp_path: Path):
    """Without the shipped copy (an installed wheel has none), no Debian package and no internet."""
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as m:
        m.setattr(data, "REPO_DATA", tmp_path / "no-shipped-data")
        m.setitem(data.DATASETS, "fashion_mnist", dataclasses.replace(data.DATASETS["fashion_mnist"], system=(
            data.SystemCopy(str(tmp_path / "not-installed"), "Debian's dataset-fashion-mnist package"),)))
        with pytest.raises(DataError) as e:
            locate("fashion_mnist", tmp_path / "d", allow_download=False)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert str(tmp_path / "d" / "FashionMNIST" / "raw") in str(e.value) and "\n" not in str(e.value)


def test_no_download_flag(tmp_path: Path, nothing_shipped):
    with pytest.raises(DataError, match="downloads are off"):
        locate("mnist", tmp_path, allow_download=False)


# ---------------------------------------------------------------- the user's files are never written


def test_a_folder_with_a_file_missing_is_refused_and_left_as_it_was(tmp_path: Path):
    """Issue 26: three of the four files of the user's own data; once the shipped MNIST was read instead,
    and the user's three files were replaced with MNIST's."""
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw", train=100, test=50, gz=False)
    (raw / "train-labels-idx1-ubyte").unlink()
    before = snapshot(tmp_path / "mydata")
    with pytest.raises(DataError) as e:
        MNISTDataModule(data_dir=str(tmp_path / "mydata")).prepare_data()
    assert str(e.value) == (f"{raw}: holds 3 of the 4 MNIST files, missing train-labels-idx1-ubyte[.gz]; "
                            "add it, or give another --data.data_dir (nothing was read or written)")
    assert snapshot(tmp_path / "mydata") == before


def test_the_users_own_small_folder_is_used_as_it_is(tmp_path: Path):
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw", train=100, test=50, gz=False)
    before = snapshot(tmp_path / "mydata")
    dm = MNISTDataModule(data_dir=str(tmp_path / "mydata"), download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(y) for _, y in dm.train_dataloader()) == 100 and len(dm.test_set()[1]) == 50
    assert dm.source == raw and snapshot(tmp_path / "mydata") == before


def test_gz_files_beside_the_users_own_copies_are_read_and_neither_is_rewritten(tmp_path: Path):
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw")
    write_idx_folder(raw, gz=False)  # the user's own uncompressed copies, beside the .gz files

    def test_labels() -> torch.Tensor:
        dm = MNISTDataModule(data_dir=str(tmp_path / "mydata"), download=False)
        dm.prepare_data()
        dm.setup("test")
        return dm.test_set()[1]

    first = test_labels()
    _, labels = synthetic_split(TEST, 9)
    packed = raw / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    os.utime(packed, ns=(1, 1))  # even an older time (cp -p, tar): different from the copy's is enough
    before = snapshot(tmp_path / "mydata")
    again = test_labels()
    assert not torch.equal(first, again) and torch.equal(again, torch.from_numpy(labels).long()), "a stale copy was read"
    assert snapshot(tmp_path / "mydata") == before


# ---------------------------------------------------------------- torchvision's copies, in mnist_lit's cache


def test_copies_live_in_the_cache_made_once_and_again_when_the_source_changes(tmp_path: Path):
    source = write_idx_folder(tmp_path / "elsewhere")  # .gz files, as shipped and as Debian installs them
    root = data.prepare_raw("fashion_mnist", source)
    assert root.parent == data.cache_root() == Path(os.environ["MNIST_LIT_CACHE"])
    raw = root / "FashionMNIST" / "raw"  # torchvision's layout for its FashionMNIST class
    assert sorted(p.name for p in raw.iterdir()) == sorted(SHIPPED_MD5)  # no temporary names left
    stamp = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    assert data.prepare_raw("fashion_mnist", source) == root
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == stamp, "copied again with nothing changed"
    _, labels = synthetic_split(TEST, 7)
    (source / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    assert torch.equal(load_split(source, "test", "fashion_mnist")[1], torch.from_numpy(labels).long()), \
        "a stale copy was read"


def test_plain_files_are_linked_not_copied_and_two_sources_never_share_copies(tmp_path: Path):
    a = write_idx_folder(tmp_path / "a", gz=False)
    b = write_idx_folder(tmp_path / "b", test=TEST + 10)
    root_a, root_b = data.prepare_raw("mnist", a), data.prepare_raw("mnist", b)
    assert root_a != root_b
    link = root_a / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    assert link.is_symlink() and link.resolve() == (a / "t10k-images-idx3-ubyte").resolve()
    assert len(load_split(a, "test")[1]) == TEST and len(load_split(b, "test")[1]) == TEST + 10


def test_a_damaged_file_names_the_users_file_and_leaves_no_copy(tmp_path: Path):
    source = write_idx_folder(tmp_path / "elsewhere")
    path = source / "train-images-idx3-ubyte.gz"
    good = path.read_bytes()
    path.write_bytes(gzip.compress(gzip.decompress(good)[:-50]))  # a valid gzip of a cut IDX file
    with pytest.raises(DataError, match="truncated") as e:
        load_split(source, "train", "mnist")
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert not (data.torchvision_root(source) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
    path.write_bytes(good)
    assert load_split(source, "train", "mnist")[0].shape == (TRAIN, 1, 28, 28)


def test_a_cache_that_cannot_hold_the_copies_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source = write_idx_folder(tmp_path / "elsewhere")
    (tmp_path / "a-file").write_text("not a folder")  # fails for root too, unlike a read-only folder
    monkeypatch.setenv("MNIST_LIT_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(DataError, match="cannot write the uncompressed copy torchvision reads") as e:
        data.prepare_raw("mnist", source)
    assert str(e.value).startswith(str(tmp_path / "a-file"))
    assert "\n" not in str(e.value) and "MNIST_LIT_CACHE" in str(e.value)
    assert sorted(p.name for p in source.iterdir()) == sorted(f"{n}.gz" for n in data.FILES)


def test_class_names_come_from_torchvision():
    from torchvision import datasets

    assert datasets.FashionMNIST.classes[0] == "T-shirt/top"
    assert data.DATASETS["fashion_mnist"].classes == (  # the Fashion-MNIST README's names
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert data.DATASETS["mnist"].classes == tuple("0123456789")  # torchvision's "7 - seven", as Keras prints it


def test_an_old_torchvision_cache_in_the_data_folder_is_not_read(data_root: Path):
    """torchvision reads processed/*.pt in place of the IDX files when its root holds them; its root is
    mnist_lit's cache, never the data folder."""
    (data_root / "MNIST" / "processed").mkdir()
    torch.save((torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3)), data_root / "MNIST" / "processed" / "test.pt")
    assert len(load_split(data_root / "MNIST" / "raw", "test", "mnist")[1]) == TEST


# ---------------------------------------------------------------- batches


def _batches(n=103, bs=10, **kw):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 28, 28)
    return TensorBatches(images, torch.arange(n), bs, **kw)


def test_each_epoch_sees_every_sample_once_in_a_new_order():
    epoch = [0]
    batches = _batches(shuffle=True, seed=3, epoch=lambda: epoch[0])
    first = torch.cat([y for _, y in batches])
    again = torch.cat([y for _, y in batches])
    epoch[0] = 1
    second = torch.cat([y for _, y in batches])
    assert len(batches) == 11 and sorted(first.tolist()) == list(range(103))
    assert torch.equal(first, again), "same seed and epoch must give the same order"
    assert not torch.equal(first, second) and sorted(second.tolist()) == list(range(103))


def test_images_stay_with_their_labels():
    for x, y in _batches(shuffle=True):
        assert torch.equal(x[:, 0, 0, 0].long(), y)


def test_ranks_get_disjoint_equal_shares():
    shards = [torch.cat([y for _, y in _batches(shuffle=True, rank=r, world=3)]) for r in range(3)]
    assert [len(s) for s in shards] == [34, 34, 34]
    assert len(set(torch.cat(shards).tolist())) == 102


def test_evaluation_shards_cover_everything_once():
    shards = [torch.cat([y for _, y in _batches(rank=r, world=2)]) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(103))


@pytest.mark.parametrize("val, sizes", [("none", None), ("test", TEST), ("holdout", 100)])
def test_validation_choices(data_root: Path, val: str, sizes):
    dm = MNISTDataModule(data_dir=str(data_root), val=val, val_size=100)
    dm.setup("fit")
    train_n = sum(len(y) for _, y in dm.train_dataloader())
    val_n = sum(len(y) for _, y in dm.val_dataloader()) if val != "none" else None
    assert val_n == sizes
    assert train_n == TRAIN - (100 if val == "holdout" else 0)


def test_both_loaders_serve_the_same_test_set(data_root: Path):
    batches = {}
    for loader in ("memory", "torchvision"):
        dm = MNISTDataModule(data_dir=str(data_root), loader=loader, eval_batch_size=64)
        dm.prepare_data()
        dm.setup("test")
        x, y = next(iter(dm.test_dataloader()))
        x, y = dm.on_after_batch_transfer((x, y), 0)
        batches[loader] = (x, y)
    (xm, ym), (xt, yt) = batches["memory"], batches["torchvision"]
    assert xm.shape == xt.shape == (64, 1, 28, 28) and xm.dtype == torch.float32
    assert torch.equal(xm, xt) and torch.equal(ym, yt)
    assert 0.0 <= float(xm.min()) and float(xm.max()) == 1.0  # x / 255, no mean/std
