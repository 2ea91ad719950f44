"""Confirm CML defaults on validation splits, averaged over training seeds (never the test split).

    .venv/bin/python experiments/defaults_seeds.py [--seeds 0 1 2]

The coordinate search of tune_defaults.py reads one seed, and on 610 users (ml-latest-small) two
seeds of the same config differed by a third in validation NDCG@10. This script scores a small grid
around the search's choice with the metric at the configured epoch count (what a user gets, not the
best epoch in hindsight), averaged over seeds. Last line: one JSON object of the rows.
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np
from tune_defaults import validation_splits

from recsys_metric import TrainConfig, Trainer
from recsys_metric.evaluation import evaluate_ranking


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--margins", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    a = ap.parse_args()
    splits = validation_splits(["books", "ml-100k", "ml-latest-small"])
    print("| margin | dim | " + " | ".join(splits) + " |")
    print("|---:|---:|" + "---:|" * len(splits))
    rows = []
    for margin, dim in itertools.product(a.margins, a.dims):
        row = {"margin": margin, "dim": dim}
        for name, (fit, valid) in splits.items():
            ms = [evaluate_ranking(Trainer(TrainConfig(seed=s, margin=margin, dim=dim),
                                          show_progress=False).fit(fit), fit, valid, k=10)
                  for s in a.seeds]
            row[name] = {m: float(np.mean([x[m] for x in ms])) for m in ("NDCG@10", "HR@10")}
        rows.append(row)
        cells = [f"{row[n]['NDCG@10']:.4f} / {row[n]['HR@10']:.4f}" for n in splits]
        print(f"| {margin} | {dim} | " + " | ".join(cells) + " |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
