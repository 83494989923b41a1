"""The training and test iterables: a DataLoader path and a device-resident path (paper section 4.1.1).

Two pipelines, chosen with ``data_path``:

* ``"loader"``: a ``torch.utils.data.DataLoader`` over the torchvision dataset with torchvision
  transforms, ``workers`` worker processes (0 allowed) that live for the whole run, pinned memory
  on CUDA.
* ``"device"`` (digits, cifar10, cifar100, fashion_mnist): the whole train set is kept on ``device`` as a uint8
  NCHW tensor; every epoch is shuffled, augmented (:func:`augment_batch`) and normalised there
  with batched tensor ops.

Determinism for exact resume: the order and the augmentation of epoch ``e`` depend only on
``(seed, e)``. Call ``data.train.set_epoch(e)`` before iterating epoch ``e`` (as with
``DistributedSampler``; the epoch is not advanced automatically). Nothing here reads or changes
the global torch RNG streams as seen by the caller.

* loader path: a CPU ``torch.Generator`` seeded with ``epoch_seed(seed, e)`` draws an
  augmentation base seed, then the epoch's permutation ``randperm(n)``; the sampler hands every
  index to the workers together with that base. The augmentation of sample ``i`` runs the
  torchvision transforms under a CPU RNG seeded with ``_mix(aug_base, i)`` (the caller's RNG state
  is saved and restored around it), so a sample's augmentation depends only on (seed, epoch,
  index): the same with 0 or N workers.
* device path: a ``torch.Generator`` on the data's device, seeded with ``epoch_seed(seed, e)``,
  draws the permutation and then, batch by batch, the crop offsets and flips.

Several processes (``world_size > 1``, DistributedDataParallel): ``batch_size`` stays the global
batch; every rank draws the same permutation and augmentation as the single process and keeps its
``rank::world_size`` share of each batch, so the ranks' batches together are the single process's
batch, sample for sample and augmentation for augmentation (the last batch of an epoch is padded
with the permutation's first entries to a multiple of ``world_size``, as ``DistributedSampler``).
"""


from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from we.train.datasets import (DATA_PATHS, DATASETS, DEVICE_DATASETS, NORMALIZATIONS, PAD, DatasetInfo, DigitsDataset,
                               check_choice, epoch_seed, load_cifar, load_imagenet, SeededTransform, sample_transforms,
                               dataset_info)
from we.train.interrupt import ignore_in_worker
from we.train.fashion_mnist import FashionMNISTDataset

__all__ = ["Data", "TrainIterable", "build_data", "augment_batch", "shard_positions"]


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
    def __init__(self, dataset: SeededTransform, *, batch_size: int, workers: int, seed: int,
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
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
            worker_init_fn=ignore_in_worker)

    def __len__(self) -> int:
        return _num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def __iter__(self):
        self.sampler.set_epoch(torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)


class _LoaderEval:
    def __init__(self, dataset, *, batch_size: int, workers: int, device: torch.device) -> None:
        self.device = device
        self.pin_memory = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=self.pin_memory,
            persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
            worker_init_fn=ignore_in_worker)

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
        g.manual_seed(epoch_seed(self.seed, self.epoch))
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

    ``data_dir``: CIFAR root (holding ``cifar-10-batches-py`` / ``cifar-100-python``), the
    Fashion-MNIST root (see ``we.train.fashion_mnist``), or the ImageNet root (holding ``train/`` and ``val/`` class folders); ignored for digits.
    ``limit_train``: keep only the first N training examples. ``Data.num_train`` is the count
    used; ``Data.info.num_train`` the full split's size.
    ``rank``, ``world_size``: with ``world_size > 1`` the train iterable yields this rank's share
    of every batch: ``batch_size`` is the global batch (a multiple of ``world_size``) and each rank
    gets ``batch_size // world_size`` rows of it (see ``shard_positions``); every rank sees the whole
    test set.
    """
    _check_arguments(dataset, normalization, data_path, batch_size, eval_batch_size, workers, rank, world_size,
                     limit_train)
    info = dataset_info(dataset, normalization, image_size)
    device = torch.device(device)
    train_raw, test_raw, info = _load_splits(dataset, data_dir, download, info)
    n_train = len(train_raw) if limit_train is None else min(int(limit_train), len(train_raw))
    if data_path == "loader":
        train_ds = SeededTransform(train_raw, sample_transforms(dataset, info, train=True), n=n_train)
        test_ds = SeededTransform(test_raw, sample_transforms(dataset, info, train=False))
        train = _LoaderTrain(train_ds, batch_size=batch_size, workers=workers, seed=seed,
                             device=device, drop_last=drop_last, rank=rank, world_size=world_size)
        test = _LoaderEval(test_ds, batch_size=eval_batch_size, workers=workers, device=device)
    else:
        mean = torch.tensor(info.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        xtr, ytr = _on_device(train_raw.data, train_raw.targets, n_train, device)
        xte, yte = _on_device(test_raw.data, test_raw.targets, len(test_raw), device)
        train = _DeviceTrain(xtr, ytr, mean, std, batch_size=batch_size, seed=seed, drop_last=drop_last,
                             rank=rank, world_size=world_size)
        test = _DeviceEval(xte, yte, mean, std, batch_size=eval_batch_size)
    return Data(train=train, test=test, info=info, num_train=n_train, num_test=len(test_raw))


def _check_arguments(dataset: str, normalization: str, data_path: str, batch_size: int, eval_batch_size: int,
                     workers: int, rank: int, world_size: int, limit_train: int | None) -> None:
    """ValueError naming the first argument of build_data that is out of its range."""
    check_choice("dataset", dataset, DATASETS)
    check_choice("normalization", normalization, NORMALIZATIONS)
    check_choice("data_path", data_path, DATA_PATHS)
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


def _load_splits(dataset: str, data_dir: str, download: bool, info: DatasetInfo) -> tuple[Any, Any, DatasetInfo]:
    """(train split, test split, `info` with the train split's size and, for ImageNet, its class count)."""
    if dataset == "digits":
        train_raw, test_raw = DigitsDataset(train=True), DigitsDataset(train=False)
    elif dataset == "fashion_mnist":
        train_raw = FashionMNISTDataset(data_dir, train=True, download=download)
        test_raw = FashionMNISTDataset(data_dir, train=False, download=download)
    elif dataset in ("cifar10", "cifar100"):
        train_raw = load_cifar(dataset, data_dir, True, download)
        test_raw = load_cifar(dataset, data_dir, False, download)
    else:
        train_raw, test_raw = load_imagenet(data_dir, "train"), load_imagenet(data_dir, "val")
        if train_raw.classes != test_raw.classes:
            raise ValueError(
                f"ImageNet train and val class folders differ under {os.path.abspath(data_dir)} "
                f"({len(train_raw.classes)} vs {len(test_raw.classes)} classes)"
            )
        info = replace(info, num_classes=len(train_raw.classes))
    return train_raw, test_raw, replace(info, num_train=len(train_raw))


def _on_device(data, targets, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` uint8 HWC images as an NCHW tensor and their labels, on `device`."""
    # copies: never share (possibly read-only, cached) numpy memory with the tensors
    x = torch.from_numpy(np.array(data[:n], dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.array(targets[:n], dtype=np.int64, copy=True))
    return x.to(device), y.to(device)
