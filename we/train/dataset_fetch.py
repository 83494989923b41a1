"""Datasets made ready before any job runs (`python -m we.grid prepare GRID`, and `submit` first).

CIFAR-10/100: verified with torchvision's own checks (the md5 of every batch file); when a file is
missing or corrupt and `download` is on, the archive is fetched once, under a file lock in the data
folder (`<data_dir>/.<dataset>.lock`), so concurrent prepares and submits never download twice or
read half-extracted files; then verified again. Fashion-MNIST: its four idx files, decompressed into
`<data_dir>/FashionMNIST/raw/` from the `.gz` files found offline, else downloaded (we.train.fashion_mnist).
ImageNet: `train/` and `val/` must hold the same class folders of every ImageNet class. digits: built in
(scikit-learn), nothing to do. A dataset that is not ready raises DatasetNotFoundError with one line
naming the dataset and the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock

from we.errors import DatasetNotFoundError
from we.train.datasets import DATASET_SPECS
from we.train.fashion_mnist import fashion_mnist_raw_folder

IMAGENET_CLASSES = DATASET_SPECS["imagenet"].num_classes
LOCK_TIMEOUT_S = 3600.0  # a download of CIFAR over a slow link


def _cifar_class(name: str):
    from torchvision import datasets

    return datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100


def cifar_intact(name: str, root: Path) -> bool:
    """torchvision's check: every train and test batch file is present with its md5."""
    from torchvision.datasets.utils import check_integrity

    cls = _cifar_class(name)
    folder = Path(root) / cls.base_folder
    return all(check_integrity(str(folder / fname), md5) for fname, md5 in cls.train_list + cls.test_list)


def _prepare_cifar(name: str, root: Path, download: bool) -> str:
    cls = _cifar_class(name)
    folder = root / cls.base_folder
    if cifar_intact(name, root):  # the common case: no lock, no write
        return f"{name}: ready in {folder}"
    if not download:
        raise DatasetNotFoundError(f"dataset {name} missing or corrupt in {folder} and download is off")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetNotFoundError(f"dataset {name} missing in {folder} and {root} cannot be created "
                                   f"({type(err).__name__}: {err})") from None
    from torchvision.datasets.utils import download_and_extract_archive

    with FileLock(str(root / f".{name}.lock"), timeout=LOCK_TIMEOUT_S):
        if cifar_intact(name, root):  # another prepare fetched it while this one waited
            return f"{name}: ready in {folder} (fetched by another prepare)"
        try:
            download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except Exception as err:  # noqa: BLE001 - URLError/HTTPError/OSError/RuntimeError: one line
            cause = " ".join(f"{type(err).__name__}: {err}".split())
            raise DatasetNotFoundError(f"dataset {name} missing in {folder} and the download from {cls.url} "
                                       f"failed ({cause})") from None
        if not cifar_intact(name, root):
            raise DatasetNotFoundError(f"dataset {name} downloaded into {folder} fails torchvision's md5 check")
    return f"{name}: downloaded and verified in {folder}"


def _class_folders(folder: Path) -> set[str]:
    return {e.name for e in os.scandir(folder) if e.is_dir()}


def _prepare_imagenet(root: Path) -> str:
    found = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise DatasetNotFoundError(f"dataset imagenet: no {split}/ folder in {root}")
        found[split] = _class_folders(folder)
        if len(found[split]) != IMAGENET_CLASSES:
            raise DatasetNotFoundError(f"dataset imagenet: {folder} holds {len(found[split])} class folders, "
                                       f"expected {IMAGENET_CLASSES}")
    if found["train"] != found["val"]:
        odd = sorted(found["train"] ^ found["val"])
        raise DatasetNotFoundError(f"dataset imagenet: train/ and val/ in {root} have different classes "
                                   f"(e.g. {odd[0]})")
    return f"imagenet: {IMAGENET_CLASSES} classes in {root}/train and {root}/val"


def prepare_dataset(name: str, data_dir: str | Path, download: bool = True) -> str:
    """Make one dataset ready in `data_dir` (see the module doc); returns a one-line report."""
    root = Path(data_dir).absolute()
    if name == "digits":
        return "digits: built in (scikit-learn)"
    if name in ("cifar10", "cifar100"):
        return _prepare_cifar(name, root, download)
    if name == "imagenet":
        return _prepare_imagenet(root)
    if name == "fashion_mnist":
        return f"fashion_mnist: the 4 idx files in {fashion_mnist_raw_folder(root, download)}"
    raise DatasetNotFoundError(f"dataset {name}: unknown")
