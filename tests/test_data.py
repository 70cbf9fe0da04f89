"""Dataset loading: shapes, splits, statistics, torchvision and IDX files, and the one-line errors."""

from __future__ import annotations

import gzip
import os
import pickle
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED_MNIST_T10K, write_idx
from omegaconf import OmegaConf

from bnexp.config.compose import check_schema, dataset_settings, validate_dataset
from bnexp.config.groups import DATASETS
from bnexp.config.schema import DatasetConfig
from bnexp.core.errors import BnexpError
from bnexp.data.datasets import load_dataset

CPU = torch.device("cpu")


def load(**keys):
    """The dataset node as a run config carries it: type-checked, validated, then loaded."""
    cfg = check_schema({"dataset": keys})
    validate_dataset(cfg.dataset)
    return load_dataset(dataset_settings(cfg), CPU)


def numbered_images(count: int) -> np.ndarray:
    """28x28 images whose first two pixels spell their index, so splits can be traced back."""
    images = np.random.default_rng(0).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(count) % 256
    images[:, 0, 1] = np.arange(count) // 256
    return images


def image_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# --- digits -----------------------------------------------------------------------------------


def test_digits_shapes_and_split_sizes():
    bundle = load(name="digits")
    assert bundle.name == "digits"
    assert bundle.train_x.shape == (1438, 1, 28, 28) and bundle.val_x.shape == (359, 1, 28, 28)
    assert bundle.train_x.dtype == torch.float32 and bundle.train_y.dtype == torch.int64
    assert (bundle.in_channels, bundle.image_size, bundle.num_classes) == (1, (28, 28), 10)
    assert 0 <= bundle.train_x.min() and bundle.train_x.max() <= 16
    assert set(bundle.train_y.tolist()) == set(range(10))


def test_digits_split_is_deterministic_and_seeded():
    first, again, other = load(name="digits"), load(name="digits"), load(name="digits", split_seed=1)
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.val_y, again.val_y)
    assert not torch.equal(first.val_x, other.val_x)


def test_digits_image_size_is_configurable():
    native = load(name="digits", image_size=8)
    assert native.image_size == (8, 8)
    assert torch.equal(native.train_x, native.train_x.round())  # untouched 0..16 integers
    assert load(name="digits", image_size=32).train_x.shape[-2:] == (32, 32)


def test_digits_are_cached_after_first_use_and_read_back_identical(tmp_path, monkeypatch):
    import bnexp.data.datasets

    fresh = load(name="digits", root=str(tmp_path))
    cache = tmp_path / "digits" / "digits-28px-v1.npz"
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary file left

    def no_sklearn(size):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(bnexp.data.datasets, "_resized_digits", no_sklearn)
    cached = load(name="digits", root=str(tmp_path))
    assert torch.equal(fresh.train_x, cached.train_x) and torch.equal(fresh.val_y, cached.val_y)
    assert cached.num_classes == 10 and cached.train_x.dtype == torch.float32
    with pytest.raises(AssertionError, match="rebuilt"):  # another image size is another cache file
        load(name="digits", root=str(tmp_path), image_size=16)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _bit_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the image data: only the digest can tell
    path.write_bytes(bytes(data))


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("damage", [_truncated, _bit_flip, _fifo, lambda p: p.write_bytes(b"not a zip"),
                                    lambda p: p.unlink() or p.mkdir()],
                         ids=["truncated", "bit-flip", "fifo", "garbage", "directory"])
@pytest.mark.timeout(60)
def test_a_damaged_digits_cache_is_ignored_and_rebuilt(tmp_path, damage):
    reference = load(name="digits", root=str(tmp_path))
    cache = tmp_path / "digits" / "digits-28px-v1.npz"
    damage(cache)
    again = load(name="digits", root=str(tmp_path))
    assert torch.equal(reference.train_x, again.train_x) and torch.equal(reference.train_y, again.train_y)
    if cache.is_file():  # rebuilt in place (a directory or FIFO in the way is left alone)
        from bnexp.data.datasets import _read_digits_cache

        assert _read_digits_cache(cache, 28) is not None


def test_an_unwritable_cache_folder_is_no_error(tmp_path):
    blocker = tmp_path / "root"
    blocker.write_text("a file where the data folder should be")
    assert load(name="digits", root=str(blocker)).train_x.shape == (1438, 1, 28, 28)


def test_normalize_gives_zero_mean_unit_std_on_train():
    bundle = load(name="digits")
    assert bundle.mean.shape == bundle.std.shape == (1, 1, 1, 1)
    normalized = bundle.normalize(bundle.train_x)
    assert normalized.dtype == torch.float32
    assert abs(normalized.mean().item()) < 1e-4
    assert abs(normalized.std().item() - 1) < 1e-3


def test_limits_take_the_first_images_of_the_split():
    full, limited = load(name="digits"), load(name="digits", limit_train=100, limit_val=50)
    assert torch.equal(limited.train_x, full.train_x[:100]) and torch.equal(limited.val_y, full.val_y[:50])
    assert limited.mean.item() == pytest.approx(full.train_x[:100].mean().item(), rel=1e-5)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"name": "imagenet"}, "valid datasets: digits, mnist, fashion_mnist, cifar10, idx"),
        ({"limit_train": 0}, "dataset.limit_train=0"),
        ({"limit_val": -3}, "dataset.limit_val=-3"),
        ({"val_fraction": 1.0}, "dataset.val_fraction=1.0"),
        ({"val_fraction": 0}, "between 0 and 1"),
        ({"image_size": 0}, "dataset.image_size=0"),
        ({"colour": "red"}, "unknown config key 'dataset.colour'; valid keys under dataset: download, image_size, images"),
        ({"limit_train": "many"}, "dataset.limit_train='many'"),
    ],
)
def test_bad_settings_are_one_line_errors(keys, message):
    with pytest.raises(BnexpError, match=message) as caught:
        load(**keys)
    assert "\n" not in str(caught.value)


def test_every_dataset_has_a_yaml_matching_the_schema():
    conf_dir = REPO / "conf" / "dataset"
    assert sorted(p.stem for p in conf_dir.glob("*.yaml")) == sorted(DATASETS)
    schema = OmegaConf.structured(DatasetConfig)
    for path in conf_dir.glob("*.yaml"):
        assert path.read_text().startswith("# "), f"{path.name} needs a description comment"
        node = OmegaConf.load(path)
        assert list(node.pop("defaults")) == ["/schema/dataset@_here_", "_self_"]  # typed by the schema
        assert node.name == path.stem
        assert node.limit_train is None and node.limit_val is None
        OmegaConf.merge(schema, node)  # raises on unknown keys or wrong types


# --- torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_idx_datasets_load_local_files(tmp_path, no_network, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    written = {}
    for split, count in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        # torchvision reads the unpacked files; download=true skips the network when they exist
        write_idx(raw / f"{split}-images-idx3-ubyte", images, compress=False)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, compress=False)
        written[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long())

    bundle = load(name=name, root=str(tmp_path), download=True)
    assert bundle.train_x.dtype == torch.uint8 and bundle.train_x.shape == (20, 1, 28, 28)
    assert torch.equal(bundle.train_x, written["train"][0]) and torch.equal(bundle.train_y, written["train"][1])
    assert torch.equal(bundle.val_x, written["t10k"][0]) and torch.equal(bundle.val_y, written["t10k"][1])
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    assert bundle.mean.item() == pytest.approx(written["train"][0].double().mean().item(), rel=1e-5)
    assert load(name=name, root=str(tmp_path), limit_train=5).train_x.shape[0] == 5


def test_cifar10_is_permuted_to_nchw(tmp_path, no_network, monkeypatch):
    import torchvision.datasets

    # Stand-in batches are not the real files, so torchvision's md5 checks are switched off.
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "train_list", [["data_batch_1", None]])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", None]])
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "meta",
                        {"filename": "batches.meta", "key": "label_names", "md5": None})
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(2)
    batches = {}
    for filename, count in (("data_batch_1", 6), ("test_batch", 4)):
        rows = rng.integers(0, 256, size=(count, 3 * 32 * 32), dtype=np.uint8)  # CIFAR rows: R, G, B planes
        labels = rng.integers(0, 10, size=count).tolist()
        (folder / filename).write_bytes(pickle.dumps({"data": rows, "labels": labels}))
        batches[filename] = (torch.from_numpy(rows).view(count, 3, 32, 32), torch.tensor(labels))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))

    bundle = load(name="cifar10", root=str(tmp_path))
    assert bundle.train_x.dtype == torch.uint8 and bundle.train_x.is_contiguous()
    assert torch.equal(bundle.train_x, batches["data_batch_1"][0])
    assert torch.equal(bundle.val_y, batches["test_batch"][1])
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 3, (32, 32))
    assert bundle.mean.shape == (1, 3, 1, 1)


@pytest.mark.timeout(60)
def test_offline_download_names_the_files_and_folder(tmp_path):
    with pytest.raises(BnexpError) as caught:
        load(name="mnist", root=str(tmp_path), download=True)
    message = str(caught.value)
    assert message.startswith("could not download MNIST (offline?)") and "\n" not in message
    assert f"t10k-labels-idx1-ubyte.gz into {tmp_path / 'MNIST' / 'raw'}" in message


@pytest.fixture
def refused_download(monkeypatch):
    """Every download fails at once, as offline (URLError, like a refused connection)."""
    import urllib.error

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("connection refused")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_failed_download_leaves_no_empty_folders(tmp_path, refused_download, name):
    root = tmp_path / "new" / "data"
    with pytest.raises(BnexpError, match="could not download"):
        load(name=name, root=str(root), download=True)
    assert list(tmp_path.iterdir()) == []
    kept = tmp_path / "kept"
    (kept / "MNIST" / "raw").mkdir(parents=True)  # folders that were there before stay
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(BnexpError, match="could not download"):
        load(name=name, root=str(kept), download=True)
    assert sorted(str(p.relative_to(kept)) for p in kept.rglob("*")) == ["MNIST", "MNIST/raw", "notes.txt"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fashion_mnist", "put train-images-idx3-ubyte, "),
        ("cifar10", "put cifar-10-batches-py/ (unpacked from cifar-10-python.tar.gz) into "),
    ],
)
def test_missing_files_without_download(tmp_path, name, expected):
    with pytest.raises(BnexpError, match="dataset.download=false") as caught:
        load(name=name, root=str(tmp_path), download=False)
    assert expected in str(caught.value) and str(tmp_path) in str(caught.value)


def test_data_root_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(BnexpError, match=str(tmp_path / "data")):
        load(name="cifar10", root="~/data", download=False)


# --- idx --------------------------------------------------------------------------------------


@pytest.fixture
def idx_dir(tmp_path):
    """100 numbered images with labels 0..9 in a directory, gzip-compressed like the MNIST files."""
    folder = tmp_path / "idx"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte.gz", numbered_images(100), compress=True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(100) % 10, compress=True)
    return folder


def test_idx_directory_split_is_a_seeded_partition(idx_dir):
    bundle = load(name="idx", path=str(idx_dir), val_fraction=0.25, split_seed=3)
    assert bundle.train_x.shape == (75, 1, 28, 28) and bundle.val_x.shape == (25, 1, 28, 28)
    assert bundle.train_x.dtype == torch.uint8 and bundle.num_classes == 10
    train_ids, val_ids = image_ids(bundle.train_x), image_ids(bundle.val_x)
    assert sorted(train_ids + val_ids) == list(range(100))
    assert bundle.train_y.tolist() == [i % 10 for i in train_ids]  # labels travel with their images
    assert image_ids(load(name="idx", path=str(idx_dir), val_fraction=0.25, split_seed=3).val_x) == val_ids
    assert image_ids(load(name="idx", path=str(idx_dir), val_fraction=0.25, split_seed=4).val_x) != val_ids


def test_idx_uncompressed_files_named_explicitly_relative_to_cwd(tmp_path, monkeypatch):
    write_idx(tmp_path / "pics.idx3-ubyte", numbered_images(30), compress=False)
    write_idx(tmp_path / "tags.idx1-ubyte", np.arange(30) % 3, compress=False)
    monkeypatch.chdir(tmp_path)
    bundle = load(name="idx", images="pics.idx3-ubyte", labels="tags.idx1-ubyte", val_fraction=0.5)
    assert len(bundle.train_y) == len(bundle.val_y) == 15 and bundle.num_classes == 3


def write_broken(folder: Path, which: str) -> None:
    if which == "count mismatch":
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(99) % 10, compress=True)
    elif which == "bad magic":
        write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((100, 784)), compress=True)
    elif which == "truncated":
        data = gzip.decompress((folder / "t10k-images-idx3-ubyte.gz").read_bytes())
        (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-1]))
    elif which == "broken gzip":
        (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"junk")
    elif which == "ambiguous":
        write_idx(folder / "train-images-idx3-ubyte", numbered_images(5), compress=False)
    elif which == "missing labels":
        (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    elif which == "one class":
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(100), compress=True)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("count mismatch", "holds 100 images but t10k-labels-idx1-ubyte.gz holds 99 labels"),
        ("bad magic", r"t10k-images-idx3-ubyte.gz: not an IDX file .*magic number 0x00000802, expected 0x00000803"),
        ("truncated", "t10k-images-idx3-ubyte.gz: header says 100x28x28 values but the file holds 78399"),
        ("broken gzip", "t10k-labels-idx1-ubyte.gz: broken gzip data"),
        ("ambiguous", "found t10k-images-idx3-ubyte.gz, train-images-idx3-ubyte"),
        ("missing labels", r"exactly one \*labels\*idx1-ubyte\[.gz\] file, found none"),
        ("one class", "at least two classes"),
    ],
)
def test_idx_problems_are_one_line_errors_naming_the_file(idx_dir, which, message):
    write_broken(idx_dir, which)
    with pytest.raises(BnexpError, match=message) as caught:
        load(name="idx", path=str(idx_dir))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "needs dataset.path=DIR"),
        ({"images": "a.idx3-ubyte"}, "needs dataset.path=DIR"),
        ({"path": ".", "labels": "b"}, "not both"),
        ({"path": "no/such/dir"}, "not a directory"),
        ({"images": "nope-images", "labels": "nope-labels"}, "cannot read .*nope-images"),
    ],
)
def test_idx_location_errors(tmp_path, monkeypatch, keys, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BnexpError, match=message):
        load(name="idx", **keys)


def test_idx_val_fraction_must_leave_both_splits_non_empty(idx_dir):
    with pytest.raises(BnexpError, match="leaves 100 training and 0 validation images"):
        load(name="idx", path=str(idx_dir), val_fraction=0.001)


# --- real data --------------------------------------------------------------------------------


def test_real_mnist_test_set_through_idx_loader():
    if not SHARED_MNIST_T10K.is_dir():
        pytest.skip(f"real MNIST files not present at {SHARED_MNIST_T10K}")
    bundle = load(name="idx", path=str(SHARED_MNIST_T10K), val_fraction=0.2, split_seed=0)
    assert len(bundle.train_y) == 8000 and len(bundle.val_y) == 2000
    assert bundle.train_x.shape[1:] == (1, 28, 28) and bundle.train_x.dtype == torch.uint8
    assert bundle.num_classes == 10
    counts = torch.bincount(torch.cat([bundle.train_y, bundle.val_y]), minlength=10)
    assert counts.sum() == 10_000 and counts.min() > 800 and counts.max() < 1200  # MNIST is near-balanced
    assert 30 < bundle.mean.item() < 37 and 75 < bundle.std.item() < 82  # the familiar 0.13 / 0.31 of 255
