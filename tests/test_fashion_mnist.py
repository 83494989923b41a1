"""Fashion-MNIST with the real files (Debian's dataset-fashion-mnist): counts, shapes, statistics, both paths, a run.

Skipped when the package is not installed, except with WE_REQUIRE_DATA=1 (CI), where that is a failure.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from we.errors import DatasetNotFoundError
from we.train import fashion_mnist as mnist, main
from we.train.config import load_config, resolve
from we.train.datasets import sample_transforms, dataset_info
from we.train.pipeline import build_data

SYSTEM = mnist.FASHION_MNIST_SYSTEM_DIR
HAVE = all((SYSTEM / f"{name}.gz").is_file() for name in mnist.IDX_FILES)
if not HAVE and os.environ.get("WE_REQUIRE_DATA") == "1":
    raise RuntimeError(f"WE_REQUIRE_DATA=1 but the Fashion-MNIST .gz files are missing from {SYSTEM}")
pytestmark = pytest.mark.skipif(not HAVE, reason=f"no Fashion-MNIST in {SYSTEM} (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def fm_dir(tmp_path_factory) -> Path:
    """A data_dir prepared from the system .gz files (decompressed into FashionMNIST/raw/)."""
    root = tmp_path_factory.mktemp("fm")
    raw = mnist.fashion_mnist_raw_folder(root, download=False)
    assert raw == root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(mnist.IDX_FILES)
    return root


def test_counts_shapes_and_classes(fm_dir):
    x, y = mnist.load_fashion_mnist_uint8(True, fm_dir, download=False)
    xt, yt = mnist.load_fashion_mnist_uint8(False, fm_dir, download=False)
    assert x.shape == (60_000, 32, 32, 3) and xt.shape == (10_000, 32, 32, 3)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    # padded by 2 with zeros, grey repeated over 3 channels
    assert not x[:, :2].any() and not x[:, -2:].any() and not x[:, :, :2].any() and not x[:, :, -2:].any()
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()
    assert x[:, 2:30, 2:30].max() == 255
    info = dataset_info("fashion_mnist")
    assert (info.num_classes, info.image_size, info.num_train) == (10, 32, 60_000)
    assert dataset_info("fashion_mnist", "official") == info


def test_normalisation_constants_are_the_train_statistics(fm_dir):
    x, _ = mnist.load_fashion_mnist_uint8(True, fm_dir, download=False)
    f = x[..., 0].astype(np.float64) / 255
    assert abs(f.mean() - mnist.FASHION_MNIST_MEAN[0]) < 5e-5
    assert abs(f.std() - mnist.FASHION_MNIST_STD[0]) < 5e-5
    data = build_data("fashion_mnist", str(fm_dir), batch_size=1000, data_path="device", download=False)
    assert data.train.x.shape == (60_000, 3, 32, 32) and data.train.x.dtype == torch.uint8
    normed = (data.train.x[:, 0].float().div(255) - data.train.mean[0, 0]) / data.train.std[0, 0]  # grey
    assert abs(normed.mean(dtype=torch.float64).item()) < 1e-3
    assert abs(normed.double().std().item() - 1) < 1e-3


def test_loader_and_device_paths_agree_on_unaugmented_batches(fm_dir):
    kw = dict(batch_size=100, eval_batch_size=2000, download=False, workers=0, limit_train=500)
    loader = build_data("fashion_mnist", str(fm_dir), data_path="loader", **kw)
    device = build_data("fashion_mnist", str(fm_dir), data_path="device", **kw)
    assert (loader.num_train, loader.num_test, device.num_train, device.num_test) == (500, 10_000, 500, 10_000)
    for (xa, ya), (xb, yb) in zip(loader.test, device.test, strict=True):
        assert xa.shape == xb.shape == (2000, 3, 32, 32)
        assert torch.equal(ya, yb) and torch.allclose(xa, xb, atol=1e-6)
    # training batches: the same shapes, every image a crop/flip of the padded source (values within range)
    for data in (loader, device):
        data.train.set_epoch(0)
        xs = [xb for xb, _ in data.train]
        assert len(xs) == 5 and all(xb.shape == (100, 3, 32, 32) for xb in xs)
        lo = (0 - mnist.FASHION_MNIST_MEAN[0]) / mnist.FASHION_MNIST_STD[0]
        assert torch.isclose(torch.cat(xs).min(), torch.tensor(lo), atol=1e-5)


def test_the_paper_augmentation_is_the_cifar_one():
    from torchvision import transforms as T

    steps = sample_transforms("fashion_mnist", dataset_info("fashion_mnist"), train=True).transforms
    crop, flip = steps[0], steps[1]
    assert isinstance(crop, T.RandomCrop) and crop.size == (32, 32) and crop.padding == 4
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5


def test_gz_files_in_data_dir_are_found(tmp_path, monkeypatch):
    for name in mnist.IDX_FILES:
        shutil.copy(SYSTEM / f"{name}.gz", tmp_path / f"{name}.gz")
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    raw = mnist.fashion_mnist_raw_folder(tmp_path, download=False)
    assert (raw / "t10k-labels-idx1-ubyte").stat().st_size == 10_008


def test_missing_files_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST not found .* download=False"):
        build_data("fashion_mnist", str(tmp_path / "empty"), batch_size=8, download=False)


def test_config_resolves_as_cifar_family():
    cfg = resolve(load_config(None, ["dataset=fashion_mnist", "model=resnet56"]))
    assert cfg.image_size == 32 and cfg.epochs == 200 and cfg.normalization == "paper"


# 4096 images, one epoch of 128 steps of a small conv net (tests/plain_models.py): 63.3% top-1 on the
# 10,000 test images (seed 0, torch 2.14 CPU; 59% with batch 64). Chance is 10%; a run that does not
# learn (a wrong label, an unnormalised image, a dead optimiser) stays near it.
LEARNS_TOP1 = 50.0


@pytest.mark.slow
def test_a_short_training_run_learns(fm_dir, tmp_path):
    cfg = load_config(None, ["dataset=fashion_mnist", f"data_dir={fm_dir}", "download=false",
                             "model=plain_models:plain_cnn", "method=we", "epochs=1", "limit_train=4096",
                             "batch_size=32", "lr=0.05", "workers=0", "progress=plain", f"out={tmp_path}"])
    result = main(cfg)
    assert result["status"] == "complete" and result["epochs_done"] == 1
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["config"]["dataset"] == "fashion_mnist" and saved["config"]["limit_train"] == 4096
    assert saved["final_top1"] > LEARNS_TOP1, saved["final_top1"]
