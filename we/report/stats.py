"""The statistics every report shares: finite values, mean ± sample std ± n, Welch's t-test, the baseline
of a group. Tables, figures, the paper layout and the benchmarks' reports all compute them here."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from we.rundir import finite

BASELINE = "baseline"  # the method label every other method of a group is tested against

__all__ = ["BASELINE", "baseline_group", "finite", "finite_values", "mean_std", "mean_std_n", "welch_p"]


def finite_values(values: Iterable[Any]) -> list[float]:
    """The values that are real, finite numbers (NaN, None, strings and bools dropped)."""
    return [float(v) for v in values if finite(v)]


def mean_std_n(values: Iterable[Any]) -> tuple[float, float, int]:
    """(mean, sample std (ddof 1), n) of the finite values; NaN mean without values, NaN std below two."""
    a = np.asarray(finite_values(values), dtype=float)
    n = len(a)
    mean = float(a.mean()) if n else math.nan
    std = float(a.std(ddof=1)) if n >= 2 else math.nan
    return mean, std, n


def mean_std(values: Iterable[Any], digits: int = 2, pm: str = " ± ") -> str:
    """"mean ± std" of the finite values ("–" without any; the mean alone with one)."""
    mean, std, n = mean_std_n(values)
    if not n:
        return "–"
    return f"{mean:.{digits}f}" + (f"{pm}{std:.{digits}f}" if finite(std) else "")


def welch_p(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Two-sided Welch's t-test p-value (NaN when either side has fewer than two finite values)."""
    from scipy import stats

    a, b = finite_values(a), finite_values(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def baseline_group(groups: dict[tuple, Any], keys: list[str], key: tuple) -> Optional[Any]:
    """The baseline group of `key` among `groups` (keyed by the values of `keys`): the baseline of the same
    dataset, model and other axes, else of the same dataset and model when exactly one such group exists."""
    exact = tuple(BASELINE if k == "method" else v for k, v in zip(keys, key))
    if exact in groups:
        return groups[exact]
    i_ds, i_model, i_method = keys.index("dataset"), keys.index("model"), keys.index("method")
    same = [g for g in groups if g[i_method] == BASELINE and g[i_ds] == key[i_ds] and g[i_model] == key[i_model]]
    return groups[same[0]] if len(same) == 1 else None
