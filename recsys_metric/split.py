"""Seeded train/test splits over the same id maps. A test pair never appears in train."""

from __future__ import annotations

import numpy as np

from .data import Interactions


def _entry_users(inter: Interactions) -> np.ndarray:
    return np.repeat(np.arange(inter.n_users), np.diff(inter.matrix.indptr))


def _split(inter: Interactions, test_mask: np.ndarray) -> tuple[Interactions, Interactions]:
    return inter.subset(~test_mask), inter.subset(test_mask)


def leave_last_out(inter: Interactions) -> tuple[Interactions, Interactions]:
    """Each user's latest interaction is the test item (DESIGN.md protocol).

    Latest by timestamp, ties broken by the later row in the file (file order alone when there are
    no timestamps). Users with a single interaction stay train-only.
    """
    users = _entry_users(inter)
    order = inter.time_order()
    last = order[np.r_[users[order][1:] != users[order][:-1], True]]
    deg = np.diff(inter.matrix.indptr)
    test = np.zeros(inter.nnz, dtype=bool)
    test[last[deg[users[last]] >= 2]] = True
    return _split(inter, test)


def random_holdout(inter: Interactions, fraction: float = 0.2, seed: int = 0
                   ) -> tuple[Interactions, Interactions]:
    """Hold out ``round(fraction * degree)`` random interactions of each user, keeping at least one
    in train (users with one interaction stay train-only)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    users = _entry_users(inter)
    deg = np.diff(inter.matrix.indptr)
    n_test = np.minimum(np.round(fraction * deg).astype(np.int64), np.maximum(deg - 1, 0))
    # A random rank within each user's row; the n_test lowest ranks go to test.
    order = np.lexsort((rng.random(inter.nnz), users))
    rank = np.empty(inter.nnz, dtype=np.int64)
    rank[order] = np.arange(inter.nnz) - inter.matrix.indptr[users[order]]
    return _split(inter, rank < n_test[users])


def temporal(inter: Interactions, cut: float = 0.8) -> tuple[Interactions, Interactions]:
    """One global cut in time: interactions after it are test.

    ``cut`` in (0, 1) is a quantile of the timestamps; a larger number is a timestamp itself.
    Test pairs whose user or item has no train interaction stay in test here;
    :func:`recsys_metric.protocols.restrict_to_train` drops them before evaluation and counts them.
    """
    return _split(inter, inter.timestamps > temporal_cut(inter, cut))


def temporal_cut(inter: Interactions, cut: float = 0.8) -> float:
    """The timestamp of :func:`temporal`'s cut: the ``cut`` quantile of the timestamps when
    ``cut`` is in (0, 1), else ``cut`` itself. Interactions strictly after it are test."""
    if inter.timestamps is None:
        raise ValueError(f"{inter.source}: temporal split needs a timestamp column")
    return float(np.quantile(inter.timestamps, cut)) if 0.0 < cut < 1.0 else float(cut)


PROTOCOLS = ("leave-last-out", "random", "temporal")


def split(data: Interactions, protocol: str = "leave-last-out", seed: int = 0,
          cut: float | None = None) -> tuple[Interactions, Interactions]:
    """``(train, test)`` by ``protocol``: :func:`leave_last_out`, :func:`random_holdout` (20% of
    each user's items, seeded) or :func:`temporal` (``cut``, default the 0.8 time quantile). The
    one split function of ``evaluate``, ``compare`` and ``tune``, test and validation alike."""
    if protocol == "leave-last-out":
        return leave_last_out(data)
    if protocol == "random":
        return random_holdout(data, 0.2, seed)
    if protocol == "temporal":
        return temporal(data, 0.8 if cut is None else cut)
    raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def validation_split(train: Interactions, protocol: str = "leave-last-out", seed: int = 0
                     ) -> tuple[Interactions, Interactions]:
    """Carve a validation split from ``train`` (never the test split) in the shape of the task's
    test split, by :func:`split`, so that early stopping and tuning aim at what will be scored.
    Validation pairs whose user or item has no interaction left to fit on are dropped (a cut in
    time makes them), as the temporal protocol drops its unseen test pairs."""
    fit, valid = split(train, protocol, seed)
    if protocol != "temporal" or valid.nnz == 0:
        return fit, valid
    seen_user = np.diff(fit.matrix.indptr) > 0
    seen_item = np.bincount(fit.matrix.indices, minlength=fit.n_items) > 0
    keep = seen_user[_entry_users(valid)] & seen_item[valid.matrix.indices]
    return fit, valid if keep.all() else valid.subset(keep)
