"""The dataset registry (we.train.datasets.DATASET_SPECS): its facts against the published sources and the
real files, and every reader (config, data facts, cost planner, device path) reading it, not a copy."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from we.grid import cost
from we.train import datasets
from we.train.config import load_config, resolve
from we.train.datasets import DATASET_SPECS, dataset_info, load_digits_uint8

PUBLISHED = {  # (classes, train, test): the datasets' own papers and pages (ImageNet: ILSVRC-2012 train / val)
    "cifar10": (10, 50_000, 10_000), "cifar100": (100, 50_000, 10_000), "imagenet": (1000, 1_281_167, 50_000),
    "fashion_mnist": (10, 60_000, 10_000), "digits": (10, 1437, 360),  # digits: 1,797 images, 20% held out
}


@pytest.mark.parametrize("name", sorted(DATASET_SPECS))
def test_the_registry_holds_the_published_sizes(name: str):
    spec = DATASET_SPECS[name]
    assert (spec.num_classes, spec.train_images, spec.test_images) == PUBLISHED[name]
    assert spec.family == ("imagenet" if name == "imagenet" else "cifar")
    assert spec.image_size == (224 if name == "imagenet" else 32)


def test_digits_sizes_are_those_of_the_built_split():
    (x_train, y_train), (x_test, y_test) = load_digits_uint8(True), load_digits_uint8(False)
    spec = DATASET_SPECS["digits"]
    assert (len(x_train), len(x_test)) == (spec.train_images, spec.test_images)
    assert len(np.unique(np.concatenate([y_train, y_test]))) == spec.num_classes
    assert x_train.shape[1:3] == (spec.image_size, spec.image_size)


def test_every_reader_reads_the_registry(monkeypatch):
    """A changed entry reaches the config's image size and choices, the data facts, the planner and the
    device path: nothing keeps a copy of its own."""
    changed = dataclasses.replace(DATASET_SPECS["cifar10"], num_classes=7, train_images=1234, image_size=40,
                                  device_path=False)
    monkeypatch.setitem(DATASET_SPECS, "cifar10", changed)
    assert dataset_info("cifar10").num_classes == 7 and dataset_info("cifar10").num_train == 1234
    cell = SimpleNamespace(config={"dataset": "cifar10", "limit_train": None})
    assert cost.train_images(cell) == 1234
    assert cost.train_images(SimpleNamespace(config={"dataset": "cifar10", "limit_train": 5000})) == 1234
    assert resolve(load_config(None, ["dataset=cifar10", "model=resnet20"])).image_size == 40
    assert dataset_info("cifar10").image_size == 40
    assert datasets.dataset_family("cifar10") == "cifar"


def test_the_device_path_and_the_config_choices_follow_the_registry():
    assert datasets.DEVICE_DATASETS == tuple(n for n, s in DATASET_SPECS.items() if s.device_path)
    assert "imagenet" not in datasets.DEVICE_DATASETS
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; allowed: digits, cifar10"):
        datasets.dataset_spec("mnist")
