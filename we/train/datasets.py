"""Datasets of the paper (Sec. 4.1.1) and the offline digits stand-in: facts, raw datasets, transforms.

CIFAR-10/100 through torchvision (download into ``data_dir`` where the network allows), ImageNet as
``train/`` and ``val/`` class folders, scikit-learn's 8x8 digits as 32x32 RGB images, and Fashion-MNIST
as 32x32 RGB images (``we.train.fashion_mnist``). Every
sample's augmentation on the loader path runs under a seed of (run seed, epoch, index); see
``we.train.pipeline`` for the iterables built on these.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from we.errors import DatasetNotFoundError
from we.train.arrays import ArrayImageDataset
from we.train.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["DATASET_SPECS", "DATASETS", "NORMALIZATIONS", "DATA_PATHS", "TRAIN_IMAGES", "DatasetInfo",
           "DatasetNotFoundError", "DatasetSpec", "DigitsDataset", "dataset_family", "dataset_info", "dataset_spec",
           "load_digits_uint8"]

NORMALIZATIONS: tuple[str, ...] = ("paper", "official")
DATA_PATHS: tuple[str, ...] = ("loader", "device")

PAD = 4  # zero padding per side for the CIFAR-style random crop (paper 4.1.1)

# True channel statistics of the training sets (population std over all train pixels, in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# The authors' public CIFAR script (used there for CIFAR-10 and CIFAR-100 alike).
AUTHORS_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
AUTHORS_CIFAR_STD = (0.2023, 0.1994, 0.2010)
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


def check_choice(kind: str, value: Any, allowed: Sequence[str]) -> None:
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


Stats = tuple[tuple[float, float, float], tuple[float, float, float]]  # (channel mean, channel std)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the suite knows of a dataset; every other module reads it from DATASET_SPECS."""
    name: str
    family: str  # "cifar" (32x32 inputs, the CIFAR recipe) or "imagenet"
    num_classes: int
    train_images: int  # the full training set (ImageNet: the standard copy; a run counts the one on disk)
    test_images: int  # the test set (ImageNet: the validation set)
    image_size: int  # the input size (ImageNet: the default; the 32x32 sets take this one only)
    stats: Stats  # the training set's own channel statistics ("paper" normalisation)
    authors_stats: Stats | None  # the authors' script's constants ("official"), None: it has none of its own
    device_path: bool  # the on-device data path (data_path=device) supports it
    loader: str  # where its raw data comes from

    @property
    def sized_on_disk(self) -> bool:
        """Whether a run counts its training images from the copy on disk (ImageNet)."""
        return self.family == "imagenet"


DATASET_SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("digits", "cifar", 10, 1437, 360, 32, (DIGITS_MEAN, DIGITS_STD), None, True,
                "scikit-learn's 8x8 digits, upscaled to 32x32 RGB (load_digits_uint8)"),
    DatasetSpec("cifar10", "cifar", 10, 50_000, 10_000, 32, (CIFAR10_MEAN, CIFAR10_STD),
                (AUTHORS_CIFAR_MEAN, AUTHORS_CIFAR_STD), True, "torchvision CIFAR10 (load_cifar)"),
    DatasetSpec("cifar100", "cifar", 100, 50_000, 10_000, 32, (CIFAR100_MEAN, CIFAR100_STD),
                (AUTHORS_CIFAR_MEAN, AUTHORS_CIFAR_STD), True, "torchvision CIFAR100 (load_cifar)"),
    DatasetSpec("imagenet", "imagenet", 1000, 1_281_167, 50_000, IMAGENET_DEFAULT_SIZE, (IMAGENET_MEAN, IMAGENET_STD),
                None, False, "train/ and val/ class folders (load_imagenet)"),
    DatasetSpec("fashion_mnist", "cifar", 10, 60_000, 10_000, 32, (FASHION_MNIST_MEAN, FASHION_MNIST_STD), None, True,
                "the original idx files, padded to 32x32 RGB (we.train.fashion_mnist)"),
)}
DATASETS: tuple[str, ...] = tuple(DATASET_SPECS)
DEVICE_DATASETS: tuple[str, ...] = tuple(n for n, spec in DATASET_SPECS.items() if spec.device_path)
TRAIN_IMAGES = {n: spec.train_images for n, spec in DATASET_SPECS.items()}  # training images of each full set


def dataset_spec(name: str) -> DatasetSpec:
    """The registry's entry of `name` (ValueError naming the known datasets)."""
    check_choice("dataset", name, DATASETS)
    return DATASET_SPECS[name]


def dataset_family(name: str) -> str:
    """'imagenet' for ImageNet, else 'cifar' (CIFAR-10/100 and the 32x32 digits and Fashion-MNIST sets)."""
    return dataset_spec(name).family


def dataset_info(name: str, normalization: str = "paper", image_size: int | None = None) -> DatasetInfo:
    """Static facts about a dataset.

    ``normalization="paper"``: the dataset's own channel mean/std. ``"official"``: the authors'
    CIFAR constants for cifar10 and cifar100; digits, fashion_mnist and imagenet have no authors'
    constants of their own, so there it equals ``"paper"`` (the authors' ImageNet script uses PyTorch's).
    ``image_size``: 32 only for digits/CIFAR/Fashion-MNIST; any positive size for imagenet (default 224).
    ``num_train`` is None for imagenet (it depends on the copy on disk; ``build_data`` fills it).
    """
    spec = dataset_spec(name)
    check_choice("normalization", normalization, NORMALIZATIONS)
    if spec.sized_on_disk:
        size = spec.image_size if image_size is None else int(image_size)
        if size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}")
    else:
        if image_size not in (None, spec.image_size):
            raise ValueError(f"image_size for {name} must be {spec.image_size} (or None), got {image_size!r}")
        size = spec.image_size
    mean, std = spec.authors_stats if normalization == "official" and spec.authors_stats else spec.stats
    return DatasetInfo(name, spec.num_classes, size, tuple(mean), tuple(std),
                       None if spec.sized_on_disk else spec.train_images)


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


def epoch_seed(seed: int, epoch: int) -> int:
    return _mix(_mix(0x5745_2D64_6174_61, seed), epoch)  # salt: "WE-data"


# --------------------------------------------------------------------------------------------
# Raw datasets (each returns (PIL image, int label) like torchvision's, and exposes .data
# (N, H, W, 3) uint8 and .targets for the device path where applicable)


@functools.lru_cache(maxsize=None)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # scikit-learn's first import (>= 1.9: rich) draws from the global Python RNG; a run's RNG streams
    # must not depend on whether the process imported it before, so the draw is undone
    python_rng = random.getstate()
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    random.setstate(python_rng)
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


class DigitsDataset(ArrayImageDataset):
    """scikit-learn's 8x8 digits as 32x32 RGB images, CIFAR-like interface."""

    classes = [str(i) for i in range(10)]

    def __init__(self, train: bool, transform: Optional[Callable] = None) -> None:
        self.train = train
        super().__init__(*load_digits_uint8(train), transform)


def load_cifar(name: str, root: str, train: bool, download: bool):
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


def load_imagenet(root: str, split: str):
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


def sample_transforms(name: str, info: DatasetInfo, train: bool):
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


class SeededTransform(torch.utils.data.Dataset):
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
