"""IDX checks, the data folder in torchvision's layout, and the batches both input paths serve."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from mnist_lit import data
from mnist_lit.data import DataError, MNISTDataModule, TensorBatches, find, load_split, prepare
from tests.helpers import REPO, TEST, TRAIN, idx_bytes, synthetic_split, write_idx_folder

SHIPPED_MD5 = {  # data/README.md, the MNIST database as distributed
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def test_shipped_mnist_is_the_real_database():
    for name, md5 in SHIPPED_MD5.items():
        with gzip.open(REPO / "data" / "MNIST" / "raw" / f"{name}.gz") as f:
            assert hashlib.md5(f.read()).hexdigest() == md5, name


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder`: its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- IDX errors name the file and the problem


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_idx_folder(tmp_path / "MNIST" / "raw", gz=False)


def test_reads_plain_and_gzip_files_alike(tmp_path: Path):
    write_idx_folder(tmp_path / "a" / "MNIST" / "raw", gz=False)
    write_idx_folder(tmp_path / "b" / "MNIST" / "raw", gz=True)
    plain, packed = load_split(tmp_path / "a", "train"), load_split(tmp_path / "b", "train")
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
        load_split(folder.parent.parent, "train")
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage, message", [
    (lambda gz: gz[:-20], "truncated gzip stream"),
    (lambda gz: b"hello, I am not compressed at all", "unreadable"),
    (lambda gz: gzip.compress(gzip.decompress(gz)[:-50]), "truncated"),  # a valid gzip of a cut IDX file
    (lambda gz: gzip.compress(gzip.decompress(gz) + b"\0" * 9), "decompresses to more than the 208 bytes"),
    (lambda gz: gzip.compress(b"\0\0\x08\x01\0"), "truncated header"),
    (lambda gz: gzip.compress(gzip.decompress(gz)[:-1] + b"\x0c"), "label 12 outside 0..9"),
    (lambda gz: gzip.compress(idx_bytes(synthetic_split(TEST + 1, 1)[1], 0x801)), f"but t10k-labels-idx1-ubyte.gz has {TEST + 1}"),
])
def test_a_damaged_gz_is_named_and_nothing_is_written(tmp_path: Path, damage, message):
    raw = write_idx_folder(tmp_path / "MNIST" / "raw")
    path = raw / "t10k-labels-idx1-ubyte.gz"
    good = path.read_bytes()
    path.write_bytes(damage(good))
    with pytest.raises(DataError, match=message) as e:
        load_split(tmp_path, "test")
    assert path.name in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{n}.gz" for n in data.FILES), "something was written"
    path.write_bytes(good)  # mended: decompressed and read
    assert len(load_split(tmp_path, "test")[1]) == TEST


def test_image_and_label_counts_must_agree(folder: Path):
    _, labels = synthetic_split(TEST - 1, 5)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(DataError, match=f"{TEST} images but t10k-labels-idx1-ubyte has {TEST - 1} labels"):
        load_split(folder.parent.parent, "test")


def test_labels_outside_0_to_9(folder: Path):
    _, labels = synthetic_split(TEST, 1)
    labels[3] = 12
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 0x801))
    with pytest.raises(DataError, match="label 12 outside 0..9"):
        load_split(folder.parent.parent, "test")


def test_images_must_be_28x28(folder: Path):
    (folder / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(torch.zeros(TEST, 32, 32).numpy(), 0x803))
    with pytest.raises(DataError, match="images are 32x32"):
        load_split(folder.parent.parent, "test")


# ---------------------------------------------------------------- the data folder, in torchvision's layout


def test_the_data_folder_is_read_in_torchvisions_layout(data_root: Path):
    assert find("mnist", data_root) == data_root / "MNIST" / "raw"
    assert find("fashion_mnist", data_root) == data_root / "FashionMNIST" / "raw"


def test_files_elsewhere_in_the_folder_are_not_searched_for(tmp_path: Path):
    """Files lying flat in the data folder (once searched for) are not torchvision's layout: one line says
    where they go, and nothing is read or written."""
    write_idx_folder(tmp_path, gz=False)
    before = snapshot(tmp_path)
    with pytest.raises(DataError) as e:
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    raw = tmp_path / "MNIST" / "raw"
    assert str(e.value) == (f"{raw}: no MNIST files; put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                            f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz in {raw}, or pass --data.data_dir DIR")
    assert snapshot(tmp_path) == before


def test_a_download_says_so_and_moves_only_whole_files_into_place(tmp_path: Path, monkeypatch, capsys):
    """A stand-in for torchvision's download (none reaches the internet here): it writes the four .gz files
    and unpacks them, in the temporary folder it was given; the data folder gets the .gz files, then the
    uncompressed copies of mnist_lit's own making, and no temporary folder."""
    def fetch(self, *args, **kwargs):
        write_idx_folder(Path(self.raw_folder))
        write_idx_folder(Path(self.raw_folder), gz=False)

    monkeypatch.setattr(data.datasets.MNIST, "download", fetch)
    raw = prepare("mnist", tmp_path / "d", download=True)
    assert raw == tmp_path / "d" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*data.FILES, *(f"{n}.gz" for n in data.FILES)])
    assert capsys.readouterr().out == f"Data: no MNIST files in {raw}; downloading them with torchvision\n"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["MNIST"], "temporary download folder left behind"
    assert len(load_split(tmp_path / "d", "test")[1]) == TEST


def test_offline_download_fails_in_one_line(tmp_path: Path, no_download):
    with pytest.raises(DataError) as e:
        MNISTDataModule(dataset="fashion_mnist", data_dir=str(tmp_path / "d")).prepare_data()
    message = str(e.value)
    assert "\n" not in message and "torchvision's download failed (URLError: " in message
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "d" / "FashionMNIST" / "raw") in message
    assert not list((tmp_path / "d").glob(".download-*")), "temporary download folder left behind"


def test_without_download_an_empty_folder_says_where_the_files_go(tmp_path: Path):
    with pytest.raises(DataError, match=f"^{tmp_path / 'MNIST' / 'raw'}: no MNIST files; put .* or pass --data.data_dir DIR$"):
        find("mnist", tmp_path, download=False)


def test_setup_before_prepare_data_says_so(data_root: Path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: missing; prepare_data\(\) decompresses"):
        MNISTDataModule(data_dir=str(data_root)).setup("test")


# ---------------------------------------------------------------- what is written into the data folder


def test_gz_files_are_decompressed_beside_themselves_once(tmp_path: Path):
    """torchvision reads the uncompressed files of its raw folder; they are added beside the .gz files (the
    .gz files untouched), and a second prepare_data writes nothing."""
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw")
    packed = snapshot(raw)
    dm = MNISTDataModule(data_dir=str(tmp_path / "mydata"))
    dm.prepare_data()
    made = snapshot(raw)
    assert sorted(made) == sorted([*packed, *data.FILES]), "temporary names left behind"
    assert {k: made[k] for k in packed} == packed
    assert all(made[n][0] == gzip.decompress(packed[f"{n}.gz"][0]) for n in data.FILES)
    dm.prepare_data()
    assert snapshot(raw) == made
    dm.setup("fit")
    assert sum(len(y) for _, y in dm.train_dataloader()) == TRAIN


def test_a_folder_with_a_file_missing_is_refused_and_left_as_it_was(tmp_path: Path):
    """Issue 26: three of the four files of the user's own data; once the shipped MNIST was read instead,
    and the user's three files were replaced with MNIST's."""
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw", train=100, test=50)
    (raw / "train-labels-idx1-ubyte.gz").unlink()
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


def test_the_uncompressed_file_beside_a_gz_is_read_and_neither_is_rewritten(tmp_path: Path):
    """torchvision's rule: the uncompressed file is the one read. Beside a .gz that holds other labels, the
    user's own uncompressed copy is read, and neither file is replaced."""
    raw = write_idx_folder(tmp_path / "mydata" / "MNIST" / "raw")
    write_idx_folder(raw, gz=False)  # the user's own uncompressed copies, beside the .gz files
    _, labels = synthetic_split(TEST, 9)
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, 0x801)))
    before = snapshot(tmp_path / "mydata")
    read = load_split(tmp_path / "mydata", "test")[1]
    assert torch.equal(read, torch.from_numpy(synthetic_split(TEST, 1)[1]).long())
    assert snapshot(tmp_path / "mydata") == before


def test_a_data_folder_that_cannot_be_written_is_one_line(tmp_path: Path):
    raw = write_idx_folder(tmp_path / "MNIST" / "raw")
    before = snapshot(raw)
    raw.chmod(0o555)
    locked = os.access(raw, os.W_OK) and subprocess.run(["chattr", "+i", str(raw)], capture_output=True).returncode == 0
    try:
        if os.access(raw, os.W_OK) and not locked:
            pytest.skip("this user writes into read-only folders, and chattr is not at hand")
        with pytest.raises(DataError) as e:
            MNISTDataModule(data_dir=str(tmp_path)).prepare_data()
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(raw)], check=True)
        raw.chmod(0o755)
    message = str(e.value)
    assert message.startswith(f"{raw / 'train-images-idx3-ubyte'}: could not be written (")
    assert "\n" not in message and "--data.data_dir" in message and snapshot(raw) == before


def test_class_names_come_from_torchvision():
    from torchvision import datasets

    assert datasets.FashionMNIST.classes[0] == "T-shirt/top"
    assert data.DATASETS["fashion_mnist"].classes == (  # the Fashion-MNIST README's names
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert data.DATASETS["mnist"].classes == tuple("0123456789")  # torchvision's "7 - seven", as Keras prints it


def test_an_old_torchvision_copy_in_processed_is_refused_and_left_alone(data_root: Path):
    """torchvision reads <root>/MNIST/processed/{training,test}.pt in place of raw/ when both are there, so the
    files checked would not be the ones read: one line naming the folder. One of them alone it ignores."""
    processed = data_root / "MNIST" / "processed"
    processed.mkdir()
    torch.save((torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3)), processed / "test.pt")
    assert len(load_split(data_root, "test", "mnist")[1]) == TEST
    torch.save((torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(3)), processed / "training.pt")
    before = snapshot(processed)
    with pytest.raises(DataError, match=f"^{processed}: an old torchvision's copy, which torchvision reads instead"):
        load_split(data_root, "test", "mnist")
    assert snapshot(processed) == before


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
    dm.prepare_data()
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


def test_both_loaders_hold_out_the_same_images(data_root: Path):
    held_out = {}
    for loader in ("memory", "torchvision"):
        dm = MNISTDataModule(data_dir=str(data_root), loader=loader, val="holdout", val_size=100, seed=3)
        dm.prepare_data()
        dm.setup("fit")
        batches = list(dm.val_dataloader())
        held_out[loader] = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    (xm, ym), (xt, yt) = held_out["memory"], held_out["torchvision"]
    assert xm.shape == (100, 1, 28, 28) and torch.equal(xm, xt) and torch.equal(ym, yt)
