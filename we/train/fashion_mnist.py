"""Fashion-MNIST (Xiao et al. 2017) as a CIFAR-like dataset: 60,000 + 10,000 real images, 10 classes.

Read through torchvision's ``FashionMNIST`` from ``<data_dir>/FashionMNIST/raw/`` (the four idx files,
decompressed). Offline, the original ``.gz`` files are taken from ``<data_dir>/FashionMNIST/raw/``,
``<data_dir>/`` or ``<data_dir>/fashion-mnist/``, else from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist/``), and decompressed into ``<data_dir>/FashionMNIST/raw/`` (the
package's ``.gz`` files are recompressed, so torchvision's MD5 check of them fails, but the
decompressed idx files load with ``download=False``). With none found and ``download`` on,
torchvision downloads them. The 28x28 grey images are zero-padded by 2 to 32x32 and repeated to 3
channels, so the CIFAR models, the CIFAR augmentation and the device-resident path apply unchanged.
"""
from __future__ import annotations

import functools
import gzip
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch.nn.functional as F

from we.errors import DatasetNotFoundError
from we.train.arrays import ArrayImageDataset

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_SYSTEM_DIR", "FashionMNISTDataset",
           "fashion_mnist_raw_folder", "load_fashion_mnist_uint8"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: dataset-fashion-mnist
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_PAD = 2  # 28x28 -> 32x32, zeros on every side
# Train split of the padded 32x32 images (padding included, as the network sees them), computed once
# with load_fashion_mnist_uint8(train=True): mean 0.219000, population std 0.331811 (tests recompute them).
FASHION_MNIST_MEAN = (0.2190, 0.2190, 0.2190)
FASHION_MNIST_STD = (0.3318, 0.3318, 0.3318)


def _gz_sources(data_dir: Path) -> Optional[Path]:
    """The first folder holding all four ``.gz`` files, in the order the module docstring gives."""
    for folder in (data_dir / "FashionMNIST" / "raw", data_dir, data_dir / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR):
        if all((folder / f"{name}.gz").is_file() for name in IDX_FILES):
            return folder
    return None


def fashion_mnist_raw_folder(data_dir: str | os.PathLike, download: bool) -> Path:
    """``<data_dir>/FashionMNIST/raw`` holding the four decompressed idx files (prepared as the module
    docstring says); raises DatasetNotFoundError naming the folders looked in."""
    root = Path(os.path.abspath(os.fspath(data_dir)))
    raw = root / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in IDX_FILES):
        return raw
    source = _gz_sources(root)
    if source is not None:
        try:
            raw.mkdir(parents=True, exist_ok=True)
            for name in IDX_FILES:
                if not (raw / name).is_file():
                    tmp = raw / f"{name}.part"
                    with gzip.open(source / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    tmp.replace(raw / name)
        except (OSError, EOFError) as err:
            raise DatasetNotFoundError(f"Fashion-MNIST: cannot decompress {source}/*.gz into {raw} "
                                       f"({type(err).__name__}: {err})") from err
        return raw
    if download:
        from torchvision import datasets

        try:
            datasets.FashionMNIST(root=str(root), train=True, download=True)
        except (RuntimeError, OSError) as err:
            cause = " ".join(f"{type(err).__name__}: {err}".split())
            raise DatasetNotFoundError(f"Fashion-MNIST not found in {raw}, {root} or {FASHION_MNIST_SYSTEM_DIR} "
                                       f"and the download failed ({cause})") from err
        return raw
    raise DatasetNotFoundError(f"Fashion-MNIST not found in {raw}, {root} or {FASHION_MNIST_SYSTEM_DIR} and "
                               f"download=False (apt-get install dataset-fashion-mnist, or put the 4 idx .gz files "
                               f"in {root})")


@functools.lru_cache(maxsize=4)
def _arrays(raw: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    try:
        ds = datasets.FashionMNIST(root=str(raw.parent.parent), train=train, download=False)
    except (RuntimeError, OSError, ValueError, AssertionError) as err:
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        raise DatasetNotFoundError(f"Fashion-MNIST idx files in {raw} unreadable ({cause})") from err
    grey = F.pad(ds.data, (MNIST_PAD,) * 4)  # (N, 32, 32) uint8, zero border
    nhwc = grey.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().numpy()  # grey -> 3 channels
    targets = ds.targets.numpy().astype(np.int64)
    nhwc.setflags(write=False)
    targets.setflags(write=False)
    return nhwc, targets


def load_fashion_mnist_uint8(train: bool, data_dir: str | os.PathLike = "data",
                             download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A split as ((N, 32, 32, 3) uint8, (N,) int64): 60,000 train or 10,000 test images."""
    return _arrays(fashion_mnist_raw_folder(data_dir, download), bool(train))


class FashionMNISTDataset(ArrayImageDataset):
    """Fashion-MNIST as 32x32 RGB images, CIFAR-like interface (``.data`` NHWC uint8, ``.targets``)."""

    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]

    def __init__(self, data_dir: str | os.PathLike, train: bool, download: bool = True,
                 transform: Optional[Callable] = None) -> None:
        self.train = train
        super().__init__(*load_fashion_mnist_uint8(train, data_dir, download), transform)
