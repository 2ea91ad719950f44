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

import numpy as np
from common import (
    CITEULIKE,
    DATASETS,
    ML100K,
    fit_seeds,
    header,
    mean_metrics,
    pm,
    read_citeulike,
    row,
    spread,
)

from recsys_metric import TIME_BLIND, read_ratings
from recsys_metric.protocols import read_split, share_after
from recsys_metric.split import split

PRESPLIT = {"ml-100k ua": ("ua.base", "ua.test"), "ml-100k ub": ("ub.base", "ub.test")}


def tasks(datasets: list[str]):
    """``(dataset, protocol, train part)``: the part a validation split is carved from."""
    for name in datasets:
        if name in DATASETS and DATASETS[name].is_file():
            data = read_ratings(DATASETS[name])
            for protocol in ("leave-last-out", "random", "temporal"):
                yield name, protocol, split(data, protocol, 0)[0]
        elif name in PRESPLIT and ML100K.is_dir():
            base, test = (ML100K / f for f in PRESPLIT[name])
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
    print(header(["dataset", "protocol"], ["after", *variants, "ratio", "s/fit"]))
    rows = []
    for name, protocol, train in tasks(a.datasets):
        shape = "random" if protocol.startswith("pre-split") else protocol
        fit, valid = split(train, shape, 0)
        out = {"dataset": name, "protocol": protocol, "after": share_after(fit, valid)}
        secs = []
        for label, overrides in variants.items():
            ms, s = fit_seeds(overrides, fit, valid, a.seeds)
            secs += s
            out[label] = mean_metrics(ms)
            # the spread over seeds with ddof 0, as in the committed task_defaults.md
            out[label]["NDCG@10_sd"] = spread([x["NDCG@10"] for x in ms], ddof=0)["sd"]
        out["seconds_per_fit"] = float(np.mean(secs))
        a_, b_ = (out[v]["NDCG@10"] for v in variants)
        after = "-" if out["after"] is None else f"{out['after']:.2f}"
        print(row([name, protocol, after,
                   *(pm(out[v]["NDCG@10"], out[v]["NDCG@10_sd"]) for v in variants),
                   f"{a_ / b_:.3f}", f"{out['seconds_per_fit']:.1f}"]), flush=True)
        rows.append(out)
    print(json.dumps({"seeds": a.seeds, "rows": rows}))


if __name__ == "__main__":
    main()
