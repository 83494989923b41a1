"""Datasets of the paper (Sec. 4.1.1) and the offline digits stand-in: facts, raw datasets, transforms.

CIFAR-10/100 through torchvision (download into ``data_dir`` where the network allows), ImageNet as
``train/`` and ``val/`` class folders, scikit-learn's 8x8 digits as 32x32 RGB images, and Fashion-MNIST
as 32x32 RGB images (``we.train.mnist``). Every
sample's augmentation on the loader path runs under a seed of (run seed, epoch, index); see
``we.train.pipeline`` for the iterables built on these.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from we.errors import DatasetNotFoundError
from we.train.arrays import ArrayImageDataset
from we.train.mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

__all__ = ["DATASETS", "NORMALIZATIONS", "DATA_PATHS", "TRAIN_IMAGES", "DatasetInfo", "DatasetNotFoundError",
           "DigitsDataset", "dataset_info", "load_digits_uint8"]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagenet", "fashion_mnist")
NORMALIZATIONS: tuple[str, ...] = ("paper", "official")
DATA_PATHS: tuple[str, ...] = ("loader", "device")
DEVICE_DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "fashion_mnist")

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


TRAIN_IMAGES = {"digits": 1437, "cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167,
                "fashion_mnist": 60_000}  # training images
_NUM_TRAIN = {**TRAIN_IMAGES, "imagenet": None}  # ImageNet's depends on the copy on disk
_NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000, "fashion_mnist": 10}


def dataset_info(name: str, normalization: str = "paper", image_size: int | None = None) -> DatasetInfo:
    """Static facts about a dataset.

    ``normalization="paper"``: the dataset's own channel mean/std. ``"official"``: the authors'
    CIFAR constants for cifar10 and cifar100; digits, fashion_mnist and imagenet have no authors'
    constants of their own, so there it equals ``"paper"`` (the authors' ImageNet script uses PyTorch's).
    ``image_size``: 32 only for digits/CIFAR/Fashion-MNIST; any positive size for imagenet (default 224).
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
        elif name == "fashion_mnist":
            mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
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


class DigitsDataset(ArrayImageDataset):
    """scikit-learn's 8x8 digits as 32x32 RGB images, CIFAR-like interface."""

    classes = [str(i) for i in range(10)]

    def __init__(self, train: bool, transform: Optional[Callable] = None) -> None:
        self.train = train
        super().__init__(*load_digits_uint8(train), transform)


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
