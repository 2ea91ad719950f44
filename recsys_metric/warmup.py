"""Compile the fused CPU training kernels (and the evaluation's ranking kernel) once, ahead of
the first fit.

numba compiles the kernels on their first call (one to two minutes on two cores) and caches the
machine code next to their source, so every later process starts at once. ``make install`` runs
``python -m recsys_metric.warmup``: a short fit of the default configuration on a small
generated log, which compiles and caches what a default ``train`` needs. Other losses compile on
first use; :func:`compile_notice` says so before the wait.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def cached(kernel) -> bool:
    """Whether numba ``kernel`` (a dispatcher with ``cache=True``) is compiled in this process
    or has an on-disk cache index: False means its next call compiles."""
    try:  # numba's private attributes: should they move, say nothing rather than fail a fit
        cache_file = getattr(kernel._cache, "_cache_file", None)  # NullCache: never cached
        return bool(kernel.signatures) or (cache_file is not None
                                           and Path(cache_file._index_path).exists())
    except AttributeError:
        return True


def compile_notice(kernel) -> None:
    """One line on stderr when the training ``kernel`` is about to compile."""
    if not cached(kernel):
        print("recsys-metric: compiling the fused training kernels for this machine (once: "
              "about a minute, then cached)...", file=sys.stderr, flush=True)


def warm() -> float:
    """Fit the default configuration for two epochs on a small generated log with timestamps
    (so the context rows and the pull run too) and evaluate it (the ranking kernel); returns
    the seconds it took."""
    from .data import Interactions
    from .evaluation import evaluate_ranking
    from .train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    n_users, per_user = 200, 12
    users = np.repeat(np.arange(n_users), per_user)
    items = (users % 6) * 20 + rng.integers(0, 20, len(users))  # 120 items, six tastes
    data = Interactions.from_pairs(users.astype(str), items.astype(str),
                                   timestamps=np.arange(len(users), dtype=float))
    t0 = time.perf_counter()
    fitted = Trainer(TrainConfig(epochs=2, average_last=0), show_progress=False).fit(data)
    evaluate_ranking(fitted, data.matrix, data.matrix, k=10, auc=False)  # the ranking kernel
    return time.perf_counter() - t0


if __name__ == "__main__":
    print(f"recsys-metric: training kernels compiled and cached in {warm():.0f} s")
