"""Statistics for summaries: the percentile bootstrap confidence interval of a mean."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(
    values: np.ndarray, *, seed: int, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Efron & Tibshirani 1993, ch. 13).

    Draws ``n_boot`` resamples of size n with replacement, takes each resample's mean and returns
    the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles. NaN for n = 0; the value for n = 1.
    Resamples are drawn in chunks so memory stays bounded for large n.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // v.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)
