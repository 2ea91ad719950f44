"""Uncertainty of offline metrics: bootstrap over users, and paired tests between two models.

A metric such as HR@10 is a mean over test users, so its uncertainty comes from which users
happened to be in the test set. :func:`bootstrap_ci` resamples users with replacement; and
:func:`paired_test` resamples the *same* users for two models evaluated on one split, which is
far more sensitive than comparing two separate intervals (the per-user differences cancel the
user-to-user variation both models share).

NaN entries (a metric undefined for a user, e.g. AUC without negatives) are dropped; in a paired
test, a user is dropped when either model's value is NaN.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

# Bootstrap draws are made in chunks of about this many indices (int64: 8 bytes each).
_CHUNK = 4_000_000


def _as_values(values, name: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def _check(n_boot: int, alpha: float) -> None:
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def bootstrap_means(values, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, same size) of ``values``.

    Deterministic for a given ``seed`` and length: two arrays of the same length resampled with
    the same seed use the same user indices, which is what makes a paired test paired.
    """
    a = _as_values(values)
    n = len(a)
    if n == 0:
        raise ValueError("cannot bootstrap an empty array")
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK // n)
    out = np.empty(n_boot)
    for s in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - s), n))
        out[s : s + len(idx)] = a[idx].mean(axis=1)
    return out


def bootstrap_ci(values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (one per user).

    Parameters
    ----------
    values : array-like of float, one entry per user; NaN entries are dropped.
    n_boot : number of resamples of the users (with replacement).
    alpha : 1 - confidence level; 0.05 gives the 95% interval.
    seed : the resampling is deterministic for a given seed.

    Returns
    -------
    (low, high) : the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means;
        ``(nan, nan)`` when no value is left.
    """
    _check(n_boot, alpha)
    a = _as_values(values)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return math.nan, math.nan
    means = bootstrap_means(a, n_boot, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # The percentile interval holds the mean but for float rounding (constant arrays) or extreme
    # skew in tiny samples; clamp so that it always does.
    m = float(a.mean())
    return min(float(low), m), max(float(high), m)


def paired_test(a, b, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict:
    """Paired comparison of two models' per-user values of one metric, over the same users.

    The difference is ``a - b`` (position i of both arrays must be the same user).

    Returns
    -------
    dict with
        ``n``: users compared (pairs with a NaN are dropped);
        ``mean_a``, ``mean_b``, ``mean_diff``: the means and the mean of ``a - b``;
        ``ci``: ``[low, high]``, percentile bootstrap interval of the mean difference;
        ``p_value``: two-sided paired bootstrap p-value of "mean difference = 0", from the
        resampled differences shifted to mean 0:
        ``(1 + #{|d* - mean_diff| >= |mean_diff|}) / (1 + n_boot)``, so never below
        ``1 / (1 + n_boot)``, and exactly 1 when every difference is 0;
        ``wilcoxon_p``: scipy's Wilcoxon signed-rank p-value (two-sided, zero differences
        dropped), or None where it is undefined (no non-zero difference).
    """
    _check(n_boot, alpha)
    a, b = _as_values(a, "a"), _as_values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired_test: a and b must be the same users, got lengths "
                         f"{len(a)} and {len(b)}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    res: dict = {"n": int(n), "mean_a": math.nan, "mean_b": math.nan, "mean_diff": math.nan,
                 "ci": [math.nan, math.nan], "p_value": math.nan, "wilcoxon_p": None}
    if n == 0:
        return res
    d = a - b
    diff = float(d.mean())
    res.update(mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=diff)
    if not np.any(d):
        res.update(ci=[0.0, 0.0], p_value=1.0)
        return res
    means = bootstrap_means(d, n_boot, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    # A small tolerance so that float noise in the resampled means does not change the count.
    extreme = np.abs(means - diff) >= abs(diff) - 1e-12 * max(1.0, abs(diff))
    res["ci"] = [min(float(low), diff), max(float(high), diff)]
    res["p_value"] = float((1 + extreme.sum()) / (1 + n_boot))
    res["wilcoxon_p"] = _wilcoxon(d)
    return res


def _wilcoxon(d: np.ndarray) -> float | None:
    from scipy.stats import wilcoxon

    if np.count_nonzero(d) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample and tie warnings: the p-value stands
        try:
            p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
        except ValueError:
            return None
    return p if math.isfinite(p) else None
