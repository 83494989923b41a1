"""The local executor's CPU guard: without a GPU, cells that together train on more than 2,000,000 32x32-image
passes are refused unless --allow-cpu-marathon; an ImageNet image counts (size/32)^2 passes. Expected
values are worked by hand from that rule, at and one step past the threshold."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from we.errors import InputError
from we.grid.local import LocalExecutor


def cell(dataset: str, epochs: int, limit_train: int | None, image_size: int | None = None, method: str = "baseline"):
    return SimpleNamespace(key=f"{dataset}-{epochs}", config={"dataset": dataset, "epochs": epochs, "method": method,
                                                              "limit_train": limit_train, "image_size": image_size})


CASES = [  # (cells, refused): each pair sits at the threshold, then one unit of work past it
    ([cell("cifar10", 200, 10_000)], False),  # 200 x 10,000 = 2,000,000: at the limit
    ([cell("cifar10", 201, 10_000)], True),  # 2,010,000
    ([cell("cifar10", 40, None)], False),  # the whole training set, 50,000 x 40 = 2,000,000
    ([cell("cifar10", 40, 60_000)], False),  # limit_train above the set's size counts the set only
    ([cell("cifar10", 41, None)], True),
    ([cell("cifar100", 100, 10_000), cell("cifar10", 100, 10_000)], False),  # the cells' sum: 2,000,000
    ([cell("cifar100", 100, 10_000), cell("cifar10", 100, 10_001)], True),
    ([cell("imagenet", 1, 500_000, 64)], False),  # (64/32)^2 = 4 passes an image: 4 x 500,000
    ([cell("imagenet", 1, 500_001, 64)], True),
    ([cell("imagenet", 1, 125_000, 128)], False),  # 16 x 125,000
    ([cell("imagenet", 1, 125_001, 128)], True),
    ([cell("imagenet", 1, 2_000_000, 32)], False),  # at 32 pixels an ImageNet image is one pass
]


@pytest.mark.parametrize("cells,refused", CASES)
def test_the_cpu_guard_refuses_past_two_million_passes(cells, refused: bool):
    guard = LocalExecutor(gpus=0)
    if refused:
        with pytest.raises(InputError, match="--allow-cpu-marathon"):
            guard.check(cells)
    else:
        guard.check(cells)
    LocalExecutor(gpus=0, allow_cpu_marathon=True).check(cells)  # the flag always lets them run
    LocalExecutor(gpus=1).check(cells)  # and a GPU machine never asks
