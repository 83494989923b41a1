"""The global selection rate r of a training epoch (Sec. 3.1.1, Eqs. 2-3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from we.core.checks import check_index
from we.core.hparams import PAPER_STEP_DEFAULTS as D


def training_stage(epoch: int, milestones: Sequence[int]) -> tuple[int, int]:
    """(t - 1, e0): number of milestones passed by `epoch` (0-based) and the last one (0 if none)."""
    passed = [m for m in milestones if epoch >= m]
    return len(passed), (passed[-1] if passed else 0)


def sigmoid(x: float) -> float:
    """Eq. 3."""
    return 1.0 / (1.0 + math.exp(-x))


def selection_rate(epoch: int, r_hat: float = D["r_hat"], beta: float = D["beta"], eta: float = D["eta"],
                   milestones: Sequence[int] = D["milestones"]) -> float:
    """Global selection rate r for a 0-based epoch (a negative one is a ValueError)."""
    epoch = check_index("epoch", epoch)
    t_minus_1, e0 = training_stage(epoch, milestones)
    return (r_hat / beta ** t_minus_1) * sigmoid((epoch - e0) / eta)  # Eq. 2
