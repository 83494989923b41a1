"""Data layer: CIFAR-10/100, ImageNet and an offline 8x8-digits stand-in (paper section 4.1).

Two pipelines, chosen with ``data_path``:

* ``"loader"``: a ``torch.utils.data.DataLoader`` over the torchvision dataset with torchvision
  transforms, ``workers`` worker processes (0 allowed) that live for the whole run, pinned memory
  on CUDA.
* ``"device"`` (digits, cifar10, cifar100): the whole train set is kept on ``device`` as a uint8
  NCHW tensor; every epoch is shuffled, augmented (:func:`augment_batch`) and normalised there
  with batched tensor ops.

Determinism for exact resume: the order and the augmentation of epoch ``e`` depend only on
``(seed, e)``. Call ``data.train.set_epoch(e)`` before iterating epoch ``e`` (as with
``DistributedSampler``; the epoch is not advanced automatically). Nothing here reads or changes
the global torch RNG streams as seen by the caller.

* loader path: a CPU ``torch.Generator`` seeded with ``_epoch_seed(seed, e)`` draws an
  augmentation base seed, then the epoch's permutation ``randperm(n)``; the sampler hands every
  index to the workers together with that base. The augmentation of sample ``i`` runs the
  torchvision transforms under a CPU RNG seeded with ``_mix(aug_base, i)`` (the caller's RNG state
  is saved and restored around it), so a sample's augmentation depends only on (seed, epoch,
  index): the same with 0 or N workers.
* device path: a ``torch.Generator`` on the data's device, seeded with ``_epoch_seed(seed, e)``,
  draws the permutation and then, batch by batch, the crop offsets and flips.

Several processes (``world_size > 1``, DistributedDataParallel): ``batch_size`` stays the global
batch; every rank draws the same permutation and augmentation as the single process and keeps its
``rank::world_size`` share of each batch, so the ranks' batches together are the single process's
batch, sample for sample and augmentation for augmentation (the last batch of an epoch is padded
with the permutation's first entries to a multiple of ``world_size``, as ``DistributedSampler``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DATASETS",
    "NORMALIZATIONS",
    "DATA_PATHS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Data",
    "TrainIterable",
    "dataset_info",
    "build_data",
    "augment_batch",
    "shard_positions",
    "load_digits_uint8",
]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagenet")
NORMALIZATIONS: tuple[str, ...] = ("paper", "official")
DATA_PATHS: tuple[str, ...] = ("loader", "device")
DEVICE_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100")

PAD = 4  # zero padding per side for the CIFAR-style random crop (paper 4.1.1)

# True channel statistics of the training sets (population std over all train pixels, in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# The authors' public CIFAR script (used there for CIFAR-10 and CIFAR-100 alike).
OFFICIAL_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
OFFICIAL_CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Digits (32x32x3 uint8 version built below), train split, computed once with
# load_digits_uint8(train=True): mean 0.305354, population std 0.323664 (tests recompute them).
DIGITS_MEAN = (0.3054, 0.3054, 0.3054)
DIGITS_STD = (0.3237, 0.3237, 0.3237)

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_STATE = 0  # fixed: the split never depends on the run seed

IMAGENET_DEFAULT_SIZE = 224
IMAGENET_RESIZE_RATIO = 0.875  # val: Resize(int(size / 0.875)) then CenterCrop(size); 224 -> 256


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing (or corrupted) and could not be downloaded."""


def _check_choice(kind: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_train: int | None


_NUM_TRAIN = {"digits": 1437, "cifar10": 50000, "cifar100": 50000, "imagenet": None}
_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


def dataset_info(name: str, normalization: str = "paper", image_size: int | None = None) -> DatasetInfo:
    """Static facts about a dataset.

    ``normalization="paper"``: the dataset's own channel mean/std. ``"official"``: the authors'
    CIFAR constants for cifar10 and cifar100; digits and imagenet have no authors' constants of
    their own, so there it equals ``"paper"`` (the authors' ImageNet script uses PyTorch's).
    ``image_size``: 32 only for digits/CIFAR; any positive size for imagenet (default 224).
    ``num_train`` is None for imagenet (it depends on the copy on disk; ``build_data`` fills it).
    """
    _check_choice("dataset", name, DATASETS)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    if name == "imagenet":
        size = IMAGENET_DEFAULT_SIZE if image_size is None else int(image_size)
        if size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        if image_size not in (None, 32):
            raise ValueError(f"image_size for {name} must be 32 (or None), got {image_size!r}")
        size = 32
        if name == "digits":
            mean, std = DIGITS_MEAN, DIGITS_STD
        elif normalization == "official":
            mean, std = OFFICIAL_CIFAR_MEAN, OFFICIAL_CIFAR_STD
        elif name == "cifar10":
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        else:
            mean, std = CIFAR100_MEAN, CIFAR100_STD
    return DatasetInfo(name, _NUM_CLASSES[name], size, tuple(mean), tuple(std), _NUM_TRAIN[name])


# --------------------------------------------------------------------------------------------
# Seeds


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(a: int, b: int) -> int:
    """A well-spread 63-bit seed from two integers (suits ``Generator.manual_seed``)."""
    return _splitmix64(_splitmix64(int(a) & _MASK64) ^ (int(b) & _MASK64)) >> 1


def _epoch_seed(seed: int, epoch: int) -> int:
    return _mix(_mix(0x5745_2D64_6174_61, seed), epoch)  # salt: "WE-data"


# --------------------------------------------------------------------------------------------
# Raw datasets (each returns (PIL image, int label) like torchvision's, and exposes .data
# (N, H, W, 3) uint8 and .targets for the device path where applicable)


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    imgs = torch.from_numpy(d.images.astype(np.float64)).unsqueeze(1) * (255.0 / 16.0)  # 0..16 -> 0..255
    # float64 keeps the rounding exact and platform independent (weights are dyadic rationals)
    up = F.interpolate(imgs, size=(32, 32), mode="bilinear", align_corners=False)
    up = up.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)  # gray -> 3 channels
    nhwc = up.permute(0, 2, 3, 1).contiguous().numpy()
    target = d.target.astype(np.int64)
    idx = np.arange(len(target))
    tr, te = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, stratify=target, random_state=DIGITS_SPLIT_STATE
    )
    tr, te = np.sort(tr), np.sort(te)
    out = (nhwc[tr], target[tr], nhwc[te], target[te])
    for a in out:
        a.setflags(write=False)
    return out


def load_digits_uint8(train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Digits split as ((N, 32, 32, 3) uint8, (N,) int64); the split is fixed (80/20 stratified)."""
    xtr, ytr, xte, yte = _digits_arrays()
    return (xtr, ytr) if train else (xte, yte)


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's 8x8 digits as 32x32 RGB images, CIFAR-like interface."""

    classes = [str(i) for i in range(10)]

    def __init__(self, train: bool, transform: Optional[Callable] = None) -> None:
        self.train = train
        self.transform = transform
        self.data, targets = load_digits_uint8(train)
        self.targets = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def _load_cifar(name: str, root: str, train: bool, download: bool):
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    label = "CIFAR-10" if name == "cifar10" else "CIFAR-100"
    folder = os.path.join(os.path.abspath(os.fspath(root)), cls.base_folder)
    try:
        return cls(root=os.fspath(root), train=train, download=download)
    except (RuntimeError, OSError) as err:  # missing/corrupt files; URLError/HTTPError are OSErrors
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        if download:
            msg = f"{label} not found in {folder} and the download failed ({cause})"
        else:
            msg = f"{label} not found (or corrupted) in {folder} and download=False ({cause})"
        raise DatasetNotFoundError(msg) from err


def _load_imagenet(root: str, split: str):
    from torchvision import datasets

    folder = os.path.join(os.path.abspath(os.fspath(root)), split)
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"ImageNet {split} folder not found: {folder}")
    try:
        return datasets.ImageFolder(folder)
    except (FileNotFoundError, RuntimeError) as err:  # no class folders / no images
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        raise DatasetNotFoundError(f"no ImageNet {split} images usable in {folder} ({cause})") from err


# --------------------------------------------------------------------------------------------
# Transforms


def _transforms(name: str, info: DatasetInfo, train: bool):
    from torchvision import transforms as T

    tail = [T.ToTensor(), T.Normalize(info.mean, info.std)]
    if name == "imagenet":
        size = info.image_size
        if train:
            head = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            head = [T.Resize(int(size / IMAGENET_RESIZE_RATIO)), T.CenterCrop(size)]
    else:
        head = [T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip()] if train else []
    return T.Compose(head + tail)


class _SeededTransform(torch.utils.data.Dataset):
    """Applies ``transform`` to ``base[i]``. Indexed by ``(i, aug_base)``, under a CPU RNG seeded
    by ``_mix(aug_base, i)``, restoring the caller's CPU RNG state afterwards."""

    def __init__(self, base, transform: Callable, n: Optional[int] = None) -> None:
        self.base = base
        self.transform = transform
        self.n = len(base) if n is None else min(int(n), len(base))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | tuple[int, int]):
        index, aug_base = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < self.n:
            raise IndexError(index)
        img, target = self.base[index]
        if aug_base is None:
            return self.transform(img), target
        state = torch.get_rng_state()
        try:
            # only the CPU default generator: torch.manual_seed would also reseed CUDA
            torch.default_generator.manual_seed(_mix(aug_base, index))
            x = self.transform(img)
        finally:
            torch.set_rng_state(state)
        return x, target


# --------------------------------------------------------------------------------------------
# Device-side augmentation


def augment_batch(
    x_uint8: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero-pad 4, random crop back to (H, W), horizontal flip with p = 0.5, batched.

    ``x_uint8``: (N, C, H, W) uint8. Returns ``(images, offsets, flips)``: the augmented uint8
    images (N, C, H, W) on ``x``'s device; ``offsets`` (N, 2) int64 (top, left) of the crop in
    padded coordinates, each uniform in 0..8 (as ``RandomCrop(H, padding=4).get_params``); and
    ``flips`` (N,) bool, True where the crop was mirrored afterwards (as ``RandomHorizontalFlip``).
    Random numbers come from ``generator`` only (drawn on its device, then moved to ``x``'s).
    """
    if x_uint8.dim() != 4:
        raise ValueError(f"augment_batch expects an (N, C, H, W) tensor, got shape {tuple(x_uint8.shape)}")
    offsets, flips = _augment_params(x_uint8.shape[0], generator, x_uint8.device)
    return _apply_augment(x_uint8, offsets, flips), offsets, flips


def _augment_params(n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets (n, 2) and flips (n,) for ``n`` images, drawn from ``generator`` in this order."""
    gdev = generator.device
    offsets = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=gdev).to(device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=gdev).to(device).bool()
    return offsets, flips


def _apply_augment(x_uint8: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each padded image at its offsets and mirror it where ``flips`` is True."""
    n, c, h, w = x_uint8.shape
    dev = x_uint8.device
    padded = F.pad(x_uint8, (PAD, PAD, PAD, PAD))  # zeros
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # (N, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=dev)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def _normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # same ops as ToTensor() + Normalize(): x / 255, then (x - mean) / std, in float32
    return x.to(torch.float32).div_(255).sub_(mean).div_(std)


# --------------------------------------------------------------------------------------------
# Iterables


class TrainIterable:
    """Iterable of (x, y) training batches on the target device; ``len()`` is batches per epoch."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # pragma: no cover
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover
        raise NotImplementedError


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def shard_positions(n: int, batch_size: int, rank: int, world_size: int, drop_last: bool) -> torch.Tensor:
    """Positions in an epoch's permutation of ``n`` that rank ``rank`` of ``world_size`` trains on, in order.

    As ``DistributedSampler``: the permutation (padded by its own first entries to a multiple of
    ``world_size``, or cut to whole batches with ``drop_last``) is dealt out ``rank::world_size``.
    Read in batches of ``batch_size // world_size``, batch ``b`` of every rank together are exactly
    positions ``b * batch_size ...`` of the permutation: the single process's batch ``b`` (the last
    one plus the padding).
    """
    if drop_last:
        positions = torch.arange(n // batch_size * batch_size)
    else:
        pad = (-n) % world_size
        positions = torch.cat([torch.arange(n), torch.arange(pad) % max(n, 1)])
    return positions[rank::world_size]


class _EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """The epoch's permutation as ``(index, aug_base)`` pairs (with ``positions``: this rank's
    share of it, see ``shard_positions``); ``set_epoch`` draws both from the epoch's generator."""

    def __init__(self, n: int, positions: Optional[torch.Tensor] = None) -> None:
        self.n, self.positions = n, positions
        self.perm: Optional[torch.Tensor] = None
        self.aug_base = 0

    def set_epoch(self, generator: torch.Generator) -> None:
        self.aug_base = int(torch.randint(0, 2**62, (), generator=generator))
        self.perm = torch.randperm(self.n, generator=generator)

    def __len__(self) -> int:
        return self.n if self.positions is None else len(self.positions)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        assert self.perm is not None, "set_epoch first"
        order = self.perm if self.positions is None else self.perm[self.positions]
        return ((i, self.aug_base) for i in order.tolist())


class _LoaderTrain(TrainIterable):
    def __init__(self, dataset: _SeededTransform, *, batch_size: int, workers: int, seed: int,
                 device: torch.device, drop_last: bool, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.drop_last = drop_last
        self.pin_memory = device.type == "cuda"
        self.epoch = 0
        positions = None if world_size == 1 else \
            shard_positions(len(dataset), batch_size, rank, world_size, drop_last)
        self.sampler = _EpochSampler(len(dataset), positions)
        # One loader, its workers kept from epoch to epoch (the sampler changes, not the dataset).
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size // world_size, sampler=self.sampler,
            drop_last=drop_last and world_size == 1, num_workers=workers, pin_memory=self.pin_memory,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return _num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def __iter__(self):
        self.sampler.set_epoch(torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch)))
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)


class _LoaderEval:
    def __init__(self, dataset, *, batch_size: int, workers: int, device: torch.device) -> None:
        self.device = device
        self.pin_memory = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=self.pin_memory,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)


class _DeviceTrain(TrainIterable):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
                 batch_size: int, seed: int, drop_last: bool, rank: int = 0, world_size: int = 1) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self) -> int:
        return _num_batches(len(self.y), self.batch_size, self.drop_last)

    def __iter__(self):
        g = torch.Generator(device=self.x.device)
        g.manual_seed(_epoch_seed(self.seed, self.epoch))
        n = len(self.y)
        perm = torch.randperm(n, generator=g, device=self.x.device)
        if self.world_size > 1:
            yield from self._shard(perm, g)
            return
        for b in range(len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            xb, _, _ = augment_batch(self.x[idx], g)
            yield _normalize_uint8(xb, self.mean, self.std), self.y[idx]

    def _shard(self, perm: torch.Tensor, g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's rows of each global batch, augmented with the single process's random draws."""
        w, dev = self.world_size, self.x.device
        for b in range(len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            offsets, flips = _augment_params(len(idx), g, dev)
            pad = (-len(idx)) % w  # only the last batch: padded with the permutation's first entries
            if pad:
                idx = torch.cat([idx, perm[torch.arange(pad, device=dev) % len(perm)]])
                more = _augment_params(pad, g, dev)
                offsets, flips = torch.cat([offsets, more[0]]), torch.cat([flips, more[1]])
            mine = slice(self.rank, None, w)
            xb = _apply_augment(self.x[idx[mine]], offsets[mine], flips[mine])
            yield _normalize_uint8(xb, self.mean, self.std), self.y[idx[mine]]


class _DeviceEval:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, *,
                 batch_size: int) -> None:
        self.x, self.y, self.mean, self.std = x, y, mean, std
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        for s in range(0, len(self.y), self.batch_size):
            yield _normalize_uint8(self.x[s:s + self.batch_size], self.mean, self.std), self.y[s:s + self.batch_size]


@dataclass
class Data:
    train: TrainIterable  # iterable of (x, y) already on `device`; len() = batches per epoch; .set_epoch(e)
    test: Iterable  # iterable of (x, y) on `device`; len()
    info: DatasetInfo
    num_train: int
    num_test: int


# --------------------------------------------------------------------------------------------


def build_data(
    dataset: str,
    data_dir: str,
    *,
    batch_size: int,
    eval_batch_size: int = 1000,
    normalization: str = "paper",
    image_size: int | None = None,
    data_path: str = "loader",
    device: torch.device | str = "cpu",
    workers: int = 2,
    seed: int = 0,
    download: bool = True,
    drop_last: bool = False,
    limit_train: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Data:
    """Build the train/test iterables (see the module docstring).

    ``data_dir``: CIFAR root (holding ``cifar-10-batches-py`` / ``cifar-100-python``), or the
    ImageNet root (holding ``train/`` and ``val/`` class folders); ignored for digits.
    ``limit_train``: keep only the first N training examples. ``Data.num_train`` is the count
    used; ``Data.info.num_train`` the full split's size.
    ``rank``, ``world_size``: with ``world_size > 1`` the train iterable yields this rank's share
    of every batch: ``batch_size`` is the global batch (a multiple of ``world_size``) and each rank
    gets ``batch_size // world_size`` rows of it (see ``shard_positions``); every rank sees the whole
    test set.
    """
    _check_choice("dataset", dataset, DATASETS)
    _check_choice("normalization", normalization, NORMALIZATIONS)
    _check_choice("data_path", data_path, DATA_PATHS)
    if data_path == "device" and dataset not in DEVICE_DATASETS:
        raise ValueError(
            f"data_path 'device' is not available for dataset {dataset!r}; it supports: {', '.join(DEVICE_DATASETS)}"
        )
    if batch_size <= 0 or eval_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got {batch_size} and {eval_batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if world_size < 1 or not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be a multiple of world_size {world_size} "
                         f"(and 0 <= rank {rank} < world_size)")
    if limit_train is not None and limit_train <= 0:
        raise ValueError(f"limit_train must be positive or None, got {limit_train}")
    info = dataset_info(dataset, normalization, image_size)
    device = torch.device(device)

    if dataset == "digits":
        train_raw, test_raw = DigitsDataset(train=True), DigitsDataset(train=False)
    elif dataset in ("cifar10", "cifar100"):
        train_raw = _load_cifar(dataset, data_dir, True, download)
        test_raw = _load_cifar(dataset, data_dir, False, download)
    else:
        train_raw, test_raw = _load_imagenet(data_dir, "train"), _load_imagenet(data_dir, "val")
        if train_raw.classes != test_raw.classes:
            raise ValueError(
                f"ImageNet train and val class folders differ under {os.path.abspath(data_dir)} "
                f"({len(train_raw.classes)} vs {len(test_raw.classes)} classes)"
            )
        info = replace(info, num_classes=len(train_raw.classes))
    info = replace(info, num_train=len(train_raw))

    n_train = len(train_raw) if limit_train is None else min(int(limit_train), len(train_raw))
    n_test = len(test_raw)

    if data_path == "loader":
        train_ds = _SeededTransform(train_raw, _transforms(dataset, info, train=True), n=n_train)
        test_ds = _SeededTransform(test_raw, _transforms(dataset, info, train=False))
        train = _LoaderTrain(train_ds, batch_size=batch_size, workers=workers, seed=seed,
                             device=device, drop_last=drop_last, rank=rank, world_size=world_size)
        test = _LoaderEval(test_ds, batch_size=eval_batch_size, workers=workers, device=device)
    else:
        def to_dev(data, targets, n):
            # copies: never share (possibly read-only, cached) numpy memory with the tensors
            x = torch.from_numpy(np.array(data[:n], dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).contiguous()
            y = torch.from_numpy(np.array(targets[:n], dtype=np.int64, copy=True))
            return x.to(device), y.to(device)

        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        xtr, ytr = to_dev(train_raw.data, train_raw.targets, n_train)
        xte, yte = to_dev(test_raw.data, test_raw.targets, n_test)
        train = _DeviceTrain(xtr, ytr, mean, std, batch_size=batch_size, seed=seed, drop_last=drop_last,
                             rank=rank, world_size=world_size)
        test = _DeviceEval(xte, yte, mean, std, batch_size=eval_batch_size)

    return Data(train=train, test=test, info=info, num_train=n_train, num_test=n_test)
