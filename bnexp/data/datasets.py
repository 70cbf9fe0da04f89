"""Datasets held whole as tensors on the training device.

Every dataset here fits in memory, so instead of a DataLoader with per-sample transforms the
trainer gets raw (un-normalized, compactly stored) tensors, shuffles by index and normalizes each
batch with :meth:`DataBundle.normalize`. That keeps epochs fast on CPU and GPU alike.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import math
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bnexp.config import cache
from bnexp.config.groups import DATASETS
from bnexp.config.schema import DatasetConfig
from bnexp.core.errors import BnexpError

# The largest normalized float32 copy of a training set kept for the whole run (train_batch).
NORMALIZED_COPY_BYTES = 1 << 30


@dataclass
class DataBundle:
    """Train and validation tensors on the device, plus the train-split statistics to normalize them."""

    name: str
    train_x: torch.Tensor  # (N, C, H, W), uint8 or float32, not normalized
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # (1, C, 1, 1) float32, in the stored units of train_x
    std: torch.Tensor
    _normalized: object = field(default=None, repr=False, compare=False)  # see train_batch

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.train_x.shape[2], self.train_x.shape[3])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A float32 batch with zero mean and unit variance per channel (as measured on train)."""
        return (x.float() - self.mean.to(x.device)) / self.std.to(x.device)

    def train_batch(self, index: torch.Tensor) -> torch.Tensor:
        """The normalized training images at ``index``: one gather from a normalized copy of the
        training set, made once, when that copy takes at most ``NORMALIZED_COPY_BYTES``; otherwise
        gathered and normalized per batch (the same values either way)."""
        if self._normalized is None:
            fits = self.train_x.numel() * 4 <= NORMALIZED_COPY_BYTES
            self._normalized = self.normalize(self.train_x) if fits else False
        if self._normalized is False:
            return self.normalize(self.train_x[index])
        return self._normalized[index]


@dataclass
class _Split:
    """What a loader returns: CPU tensors of both splits before limits and device placement."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int


IDX_IMAGES_MAGIC = 0x0803  # uint8, 3 dimensions (count, rows, columns)
IDX_LABELS_MAGIC = 0x0801  # uint8, 1 dimension (count)


def load_dataset(settings: DatasetConfig, device: torch.device | str) -> DataBundle:
    """Load the dataset that ``settings`` (the checked ``dataset`` node, see
    :func:`bnexp.config.compose.dataset_settings`) names onto ``device``."""
    split = LOADERS[DATASETS[settings.name].split(":")[0]](settings)
    device = torch.device(device)
    train_x = split.train_x[: settings.limit_train].to(device)
    mean, std = _channel_stats(train_x)
    return DataBundle(
        name=settings.name,
        train_x=train_x,
        train_y=split.train_y[: settings.limit_train].to(device),
        val_x=split.val_x[: settings.limit_val].to(device),
        val_y=split.val_y[: settings.limit_val].to(device),
        num_classes=split.num_classes,
        mean=mean,
        std=std,
    )


def _channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std, shaped (1, C, 1, 1); summed in float64 chunks to bound memory."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64, device=images.device)
    total_sq = torch.zeros_like(total)
    for part in images.split(chunk):
        values = part.to(torch.float64)
        total += values.sum(dim=(0, 2, 3))
        total_sq += values.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel is left unscaled
    return mean.float().view(1, -1, 1, 1), std.float().view(1, -1, 1, 1)


def _random_split(images: torch.Tensor, labels: torch.Tensor, settings: DatasetConfig, num_classes: int) -> _Split:
    """Shuffle with ``split_seed`` and hold out ``val_fraction``: the same split on every run and machine."""
    count = len(labels)
    val_count = round(count * settings.val_fraction)
    if not 1 <= val_count < count:
        raise BnexpError(
            f"dataset.val_fraction={settings.val_fraction} leaves {count - val_count} training and {val_count} "
            f"validation images out of {count}; pick a fraction that keeps both non-empty"
        )
    order = torch.randperm(count, generator=torch.Generator().manual_seed(settings.split_seed))
    val_idx, train_idx = order[:val_count], order[val_count:]
    return _Split(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx], num_classes)


def _resolve(path: str) -> Path:
    """Expand ``~`` and anchor relative paths at the working directory (Hydra compose does not chdir)."""
    return Path(path).expanduser().resolve()


# --- digits -----------------------------------------------------------------------------------


DIGITS_CACHE = "digits/digits-{size}px-v1.npz"  # under dataset.root; v1: bilinear resize of sklearn's 8x8


def _load_digits(settings: DatasetConfig) -> _Split:
    """scikit-learn's bundled 8x8 digits (values 0..16), resized so 28x28 models accept them. The
    resized tensors are cached under ``dataset.root`` after first use: importing scikit-learn
    costs more than a default training run."""
    size = settings.image_size
    cache = _resolve(settings.root) / DIGITS_CACHE.format(size=size)
    cached = _read_digits_cache(cache, size)
    if cached is None:
        cached = _resized_digits(size)
        _write_digits_cache(cache, *cached)
    images, labels, num_classes = cached
    return _random_split(torch.from_numpy(images), torch.from_numpy(labels), settings, num_classes)


def _resized_digits(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1)
    if images.shape[-2:] != (size, size):
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.numpy(), digits.target.astype(np.int64), len(digits.target_names)


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


def _read_digits_cache(path: Path, size: int):
    """The cached ``(images, labels, num_classes)``, or None when the file is missing or is not
    exactly what :func:`_write_digits_cache` wrote (then it is rebuilt): never a crash. The content
    digest is checked once per version of the file (:func:`_verified_key`), not on every run."""
    import zipfile

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO planted there never hangs
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as file:
        try:
            with np.load(file, allow_pickle=False) as data:
                images, labels, num_classes, digest = (data["images"], data["labels"], int(data["num_classes"]),
                                                       str(data["digest"]))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None
    valid = (images.dtype == np.float32 and images.ndim == 4 and images.shape[1:] == (1, size, size)
             and labels.dtype == np.int64 and labels.shape == (len(images),) and len(images) > 0
             and 1 < num_classes)
    if not valid:
        return None
    verified = _verified_key(path, info)
    if cache.read(VERIFIED_CACHE, verified) != digest:
        if digest != _digest(images, labels):
            return None
        cache.write(VERIFIED_CACHE, verified, digest)
    return images, labels, num_classes


VERIFIED_CACHE = "verified"  # bnexp's cache section of files whose digest was checked


def _verified_key(path: Path, info: os.stat_result) -> str:
    """One version of one file: any rewrite changes its inode, size, mtime or ctime (ctime cannot
    be set back by hand), so a changed file is checked again."""
    return json.dumps([os.path.realpath(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                       info.st_ctime_ns])


def _write_digits_cache(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    """Atomically, so concurrent runs never read half a file; a cache that cannot be written (a
    read-only home) is simply not kept."""
    import io

    from bnexp.store.files import write_atomic

    buffer = io.BytesIO()
    np.savez(buffer, images=images, labels=labels, num_classes=np.int64(num_classes),
             digest=np.str_(_digest(images, labels)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, buffer.getvalue())
    except OSError:
        pass


# --- torchvision: mnist, fashion_mnist, cifar10 -------------------------------------------------


def _load_torchvision(settings: DatasetConfig) -> _Split:
    """Official train split for training, official test split for validation, raw tensors only."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, DATASETS[settings.name].split(":")[1])
    root = _resolve(settings.root)
    existing = _folders(root)
    try:
        train = dataset_class(str(root), train=True, download=settings.download)
        test = dataset_class(str(root), train=False, download=settings.download)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision wraps the rest
        _remove_new_empty_folders(root, existing)
        raise BnexpError(_missing_files_message(dataset_class, root, settings.download)) from exc
    return _Split(
        _as_nchw(train.data), torch.as_tensor(train.targets, dtype=torch.int64),
        _as_nchw(test.data), torch.as_tensor(test.targets, dtype=torch.int64),
        num_classes=len(train.classes),
    )


def _folders(root: Path, depth: int = 3) -> set[Path]:
    """The folders a download may create: ``root``'s missing ancestors, ``root`` and what lies up to
    ``depth`` levels below it (torchvision makes ``<root>/<Class>/raw``), those that exist now."""
    found = {p for p in [root, *root.parents] if p.is_dir()}
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        level = [child for folder in level for child in folder.iterdir() if child.is_dir() and not child.is_symlink()]
        found.update(level)
    return found


def _remove_new_empty_folders(root: Path, existing: set[Path]) -> None:
    """After a failed download: remove the folders it created that are still empty, deepest first
    (folders holding a partial download, or that existed before, stay)."""
    for folder in sorted(_folders(root) - existing, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass


def _as_nchw(data: Any) -> torch.Tensor:
    """MNIST-family data is an (N, H, W) tensor, CIFAR's an (N, H, W, C) numpy array."""
    images = torch.as_tensor(data)
    return images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()


def _missing_files_message(dataset_class: type, root: Path, download: bool) -> str:
    """One line telling the user which files torchvision wants, and where."""
    name = dataset_class.__name__
    if hasattr(dataset_class, "resources"):  # MNIST family: .gz files in <root>/<class>/raw
        folder = root / name / "raw"
        archives = [filename for filename, _md5 in dataset_class.resources]
        # torchvision unpacks the .gz files only while downloading; otherwise it reads them unpacked
        files = ", ".join(archives if download else [Path(a).stem for a in archives])
    else:  # CIFAR: one .tar.gz in <root>, unpacked into <root>/<base_folder>
        folder = root
        archive = dataset_class.filename
        files = archive if download else f"{dataset_class.base_folder}/ (unpacked from {archive})"
    if download:
        return f"could not download {name} (offline?): put {files} into {folder} or set dataset.root=..."
    return (f"{name} not found and dataset.download=false: put {files} into {folder}, "
            f"set dataset.root=... or dataset.download=true")


# --- idx: local MNIST-format files --------------------------------------------------------------


def _load_idx(settings: DatasetConfig) -> _Split:
    """A local images/labels pair in IDX format, split into train/validation like digits."""
    images_file, labels_file = _idx_files(settings)
    images = read_idx(images_file, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_file, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise BnexpError(f"{images_file.name} holds {len(images)} images but {labels_file.name} "
                         f"holds {len(labels)} labels; they must match")
    if len(labels) == 0 or labels.max() < 1:
        raise BnexpError(f"{labels_file.name}: needs labels of at least two classes (0, 1, ...)")
    num_classes = int(labels.max()) + 1
    return _random_split(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(),
                         settings, num_classes)


def _idx_files(settings: DatasetConfig) -> tuple[Path, Path]:
    """The images and labels files, from ``path`` (a directory) or from ``images`` + ``labels``."""
    explicit = settings.images is not None or settings.labels is not None
    if settings.path is not None and explicit:
        raise BnexpError("dataset.path is set together with dataset.images/labels: set either the "
                         "directory or both files, not both")
    if settings.path is not None:
        directory = _resolve(settings.path)
        if not directory.is_dir():
            raise BnexpError(f"dataset.path={directory}: not a directory")
        return _find_idx_file(directory, "images", 3), _find_idx_file(directory, "labels", 1)
    if settings.images is None or settings.labels is None:
        raise BnexpError("the idx dataset needs dataset.path=DIR (holding one *images*idx3-ubyte[.gz] "
                         "and one *labels*idx1-ubyte[.gz] file) or both dataset.images=FILE and dataset.labels=FILE")
    return _resolve(settings.images), _resolve(settings.labels)


def _find_idx_file(directory: Path, kind: str, dims: int) -> Path:
    pattern = f"*{kind}*idx{dims}-ubyte"
    found = sorted(p.name for p in directory.iterdir()
                   if fnmatch.fnmatch(p.name, pattern) or fnmatch.fnmatch(p.name, pattern + ".gz"))
    if len(found) != 1:
        raise BnexpError(f"{directory} must hold exactly one {pattern}[.gz] file, found "
                         f"{', '.join(found) or 'none'}; or set dataset.images and dataset.labels")
    return directory / found[0]


MAX_IDX_VALUES = 1 << 32  # 4 GB of uint8 values: more than any dataset this trainer holds in memory


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (gzip or raw): magic number, big-endian int32 sizes, then uint8 values.
    The header is checked before anything is allocated: a non-regular file (``/dev/zero``, a FIFO)
    is refused without reading it, negative or absurd sizes are refused, a raw file must be exactly
    as long as its header says, and a gzip file is decompressed only up to that length (a gzip bomb
    declaring 8 GB stops at its header)."""
    dims = magic & 0xFF
    header_size = 4 + 4 * dims
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise BnexpError(f"cannot read {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BnexpError(f"{path}: not a regular file (a FIFO or a device?); give an IDX file")
        compressed = handle.read(2) == b"\x1f\x8b"
        handle.seek(0)
        stream = gzip.GzipFile(fileobj=handle, mode="rb") if compressed else handle
        try:
            header = stream.read(header_size)
            found_magic = int.from_bytes(header[:4], "big")
            if found_magic != magic or len(header) < header_size:
                raise BnexpError(f"{path.name}: not an IDX file of uint8 with {dims} dimension(s) "
                                 f"(magic number 0x{found_magic:08x}, expected 0x{magic:08x})")
            shape = tuple(int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big", signed=True) for i in range(dims))
            count = math.prod(shape)
            if any(n < 0 for n in shape) or count > MAX_IDX_VALUES:
                raise BnexpError(f"{path.name}: header says {'x'.join(map(str, shape))} values, which no IDX dataset "
                                 "holds (negative or too large)")
            if not compressed and info.st_size != header_size + count:
                raise BnexpError(f"{path.name}: header says {'x'.join(map(str, shape))} values "
                                 f"but the file holds {info.st_size - header_size}")
            data = stream.read(count + 1)  # at most one byte more than the header promises
        except (OSError, EOFError, zlib.error) as exc:
            raise BnexpError(f"{path.name}: broken gzip data ({exc})") from exc
    if len(data) != count:
        raise BnexpError(f"{path.name}: header says {'x'.join(map(str, shape))} values "
                         f"but the file holds {'more' if len(data) > count else len(data)}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


# How each kind of dataset in bnexp.config.groups.DATASETS is loaded.
LOADERS: dict[str, Callable[[DatasetConfig], _Split]] = {
    "digits": _load_digits,
    "torchvision": _load_torchvision,
    "idx": _load_idx,
}


def check_source(settings: DatasetConfig) -> None:
    """Find the dataset's files (a torchvision dataset: download them if allowed), without loading
    them: what a sweep does once per dataset before launching its jobs. Raises the BnexpError the
    job would have met."""
    kind = DATASETS[settings.name].split(":")[0]
    if kind == "idx":
        for path in _idx_files(settings):
            if not path.is_file():
                raise BnexpError(f"{path}: no such file (the idx dataset's images and labels)")
    elif kind == "torchvision":
        _load_torchvision(settings)
