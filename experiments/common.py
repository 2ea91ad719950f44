"""Helpers shared by the experiment scripts: where the data sets lie, the validation splits,
CML fitted over seeds, and the markdown cells the results files use.

The scripts run as ``.venv/bin/python experiments/X.py`` from the repository root (or from
``experiments/``); Python puts the script's directory first on ``sys.path``, so they import
this module as ``from common import ...``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from recsys_metric import Interactions, TrainConfig, Trainer, leave_last_out, read_ratings
from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.protocols import read_lists

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"  # MovieLens and citeulike copies beside the repo
DATASETS = {  # the rating files of the validation and test tables
    "books": ROOT / "data/books/ratings.csv",
    "ml-100k": SHARED / "ml-100k/u.data",
    "ml-latest-small": SHARED / "ml-latest-small/ratings.csv",
}
ML100K = SHARED / "ml-100k"  # also holds the published ua/ub splits (ua.base, ua.test, ...)
CITEULIKE = SHARED / "citeulike-t/users.dat"
METRICS = ("NDCG@10", "HR@10")


def read_citeulike(path: Path, min_items: int = 5) -> Interactions:
    """``users.dat``: one line per user, ``N item_1 ... item_N``; users with >= min_items."""
    return read_lists(path, min_items)


def validation_interactions(names: Iterable[str]) -> dict:
    """``{name: (fit, valid)}`` Interactions of the data sets in DATASETS (or paths of ratings
    files, e.g. ``synthetic.py``'s) that are present:
    leave-last-out gives (train, test) and the test part is never read; leave-last-out of
    train gives (fit, valid), each user's latest train item held out."""
    out = {}
    for name in names:
        path = DATASETS.get(name, Path(name))  # a name of DATASETS, or a ratings file's path
        if not path.is_file():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        train, _test = leave_last_out(read_ratings(path))  # the test part is never used here
        out[name] = leave_last_out(train)
    return out


def validation_splits(names: Iterable[str]) -> dict:
    """As :func:`validation_interactions`, the matrices (no time order: no ``recent_share``)."""
    return {name: (fit.matrix, valid.matrix)
            for name, (fit, valid) in validation_interactions(names).items()}


def fit_seeds(overrides: dict, fit: Interactions, valid: Interactions,
              seeds: Iterable[int]) -> tuple[list[dict], list[float]]:
    """CML with ``TrainConfig.from_dict({**overrides, "seed": s})`` fitted on ``fit`` once per
    seed and scored on ``valid`` (full ranking at 10, fit items excluded): the metrics of each
    fit and its seconds."""
    metrics, seconds = [], []
    for seed in seeds:
        t = time.perf_counter()
        res = Trainer(TrainConfig.from_dict({**overrides, "seed": seed}),
                      show_progress=False).fit(fit)
        seconds.append(time.perf_counter() - t)
        metrics.append(evaluate_ranking(res, fit.matrix, valid.matrix, k=10))
    return metrics, seconds


def mean_metrics(runs: Sequence[dict], metrics: Sequence[str] = METRICS) -> dict:
    """``{metric: mean over runs}`` of per-run metric dicts."""
    return {m: float(np.mean([r[m] for r in runs])) for m in metrics}


def spread(values: Iterable[float], ddof: int = 1) -> dict:
    """Mean, standard deviation (``ddof``), min and max of ``values``."""
    x = np.asarray(list(values), dtype=float)
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=ddof)), "min": float(x.min()),
            "max": float(x.max())}


def pm(mean: float, sd: float) -> str:
    """``mean ± sd`` to four decimals."""
    return f"{mean:.4f} ± {sd:.4f}"


def pair(cell: dict) -> str:
    """The ``NDCG@10 / HR@10`` cell of a metrics dict."""
    return f"{cell['NDCG@10']:.4f} / {cell['HR@10']:.4f}"


def row(cells: Iterable[object]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(map(str, cells)) + " |"


def header(left: Sequence[str], right: Sequence[str] = ()) -> str:
    """A markdown table's header lines: ``left`` columns left-aligned, then ``right`` ones
    right-aligned (numbers)."""
    return row([*left, *right]) + "\n|" + "---|" * len(left) + "---:|" * len(right)
