"""Test helper: a small model without BatchNorm (model=plain_models:plain_cnn), for short CPU runs that learn.

Without BatchNorm, nothing a rank computes depends on which half of the batch it holds, so two
processes with B/2 samples each compute the single process's gradient over B samples (the mean of
two equal-size means), up to the order of float sums.
"""
from __future__ import annotations

from torch import nn


def plain_cnn(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Two strided 3x3 convolutions (with bias: WE evolves filters and biases) and a linear head."""
    side = image_size // 4
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(32 * side * side, num_classes))
