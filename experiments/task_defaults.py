"""Which defaults fit which task: CML with the time order (its defaults: recency visits, context
rows, the pull) against the time-blind variant, on validation splits shaped like each protocol.

For each dataset and protocol the data is split as ``evaluate`` splits it; from the train part
a validation split is carved the same way (the test part is never read); both variants are fitted
on the carved part and scored on the validation part, over seeds. Also printed: the share of
validation pairs that come at or after their user's latest fitted interaction (``after``), the
statistic ``--task auto`` reads on a given split (``recsys_metric.protocols.task_of``).

    .venv/bin/python experiments/task_defaults.py [--seeds 0 1 2] [--datasets ...]

Prints a markdown table; the last line is one JSON object of every cell.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from recsys_metric import TIME_BLIND, Interactions, TrainConfig, Trainer, read_ratings
from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.protocols import read_split, share_after
from recsys_metric.split import split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
RATINGS = {"books": ROOT / "data/books/ratings.csv", "ml-100k": SHARED / "ml-100k/u.data",
           "ml-latest-small": SHARED / "ml-latest-small/ratings.csv"}
PRESPLIT = {"ml-100k ua": ("ua.base", "ua.test"), "ml-100k ub": ("ub.base", "ub.test")}
CITEULIKE = SHARED / "citeulike-t/users.dat"


def read_citeulike(path: Path, min_items: int = 5) -> Interactions:
    """``users.dat``: one line per user, ``N item_1 ... item_N``; users with >= min_items."""
    users, items = [], []
    for u, line in enumerate(path.read_text().splitlines()):
        its = line.split()[1:]
        if len(its) >= min_items:
            users += [str(u)] * len(its)
            items += its
    return Interactions.from_pairs(users, items, source=str(path))


def tasks(datasets: list[str]):
    """``(dataset, protocol, train part)``: the part a validation split is carved from."""
    for name in datasets:
        if name in RATINGS and RATINGS[name].is_file():
            data = read_ratings(RATINGS[name])
            for protocol in ("leave-last-out", "random", "temporal"):
                yield name, protocol, split(data, protocol, 0)[0]
        elif name in PRESPLIT and (SHARED / "ml-100k").is_dir():
            base, test = (SHARED / "ml-100k" / f for f in PRESPLIT[name])
            yield name, "pre-split (random, as given)", read_split(base, test)[0]
        elif name == "citeulike" and CITEULIKE.is_file():
            yield name, "random", split(read_citeulike(CITEULIKE), "random", 0)[0]
        else:
            print(f"skip {name}: not found", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+",
                    default=["books", "ml-100k", "ml-latest-small", "ml-100k ua", "ml-100k ub",
                             "citeulike"])
    a = ap.parse_args()
    variants = {"time order (defaults)": {}, "time-blind": TIME_BLIND}
    print("| dataset | protocol | after | " + " | ".join(variants) + " | ratio | s/fit |")
    print("|---|---|---:|" + "---:|" * (len(variants) + 2))
    rows = []
    for name, protocol, train in tasks(a.datasets):
        shape = "random" if protocol.startswith("pre-split") else protocol
        fit, valid = split(train, shape, 0)
        row = {"dataset": name, "protocol": protocol, "after": share_after(fit, valid)}
        secs = []
        for label, overrides in variants.items():
            ms = []
            for seed in a.seeds:
                t = time.perf_counter()
                res = Trainer(TrainConfig(**overrides, seed=seed), show_progress=False).fit(fit)
                secs.append(time.perf_counter() - t)
                ms.append(evaluate_ranking(res, fit.matrix, valid.matrix, k=10))
            row[label] = {m: float(np.mean([x[m] for x in ms])) for m in ("NDCG@10", "HR@10")}
            row[label]["NDCG@10_sd"] = float(np.std([x["NDCG@10"] for x in ms]))
        row["seconds_per_fit"] = float(np.mean(secs))
        a_, b_ = (row[v]["NDCG@10"] for v in variants)
        cells = [f"{row[v]['NDCG@10']:.4f} ± {row[v]['NDCG@10_sd']:.4f}" for v in variants]
        after = "-" if row["after"] is None else f"{row['after']:.2f}"
        print(f"| {name} | {protocol} | {after} | " + " | ".join(cells)
              + f" | {a_ / b_:.3f} | {row['seconds_per_fit']:.1f} |", flush=True)
        rows.append(row)
    print(json.dumps({"seeds": a.seeds, "rows": rows}))


if __name__ == "__main__":
    main()
