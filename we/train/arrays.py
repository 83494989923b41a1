"""An image dataset held as arrays: (N, H, W, 3) uint8 images and int labels, torchvision-style items."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch


class ArrayImageDataset(torch.utils.data.Dataset):
    """`data` (N, H, W, 3) uint8 and `targets` as torchvision's CIFAR datasets hold them; an item is
    (PIL image, or `transform` of it; int label). The device path reads `data` and `targets` directly."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform: Optional[Callable] = None) -> None:
        self.data = data
        self.targets = targets.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]
