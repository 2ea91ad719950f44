"""The test tables over training seeds: how much of a single run's ranking is the seed.

    .venv/bin/python experiments/seed_spread.py [--seeds 0 1 ... 9]

Leave-last-out as in run_evaluations.sh (one split, full ranking); CML with its default config,
implicit ALS and BPR with implicit's defaults, and ALS given CML's recency (``als-recency``), each
fit once per training seed on the same train part; popularity has no seed. Reports mean,
standard deviation and range over the seeds of HR@10 and NDCG@10, and in how many seeds CML
beats both time-blind peers (ALS, BPR) and ALS given the recency. Measurement only: the defaults
were chosen on validation splits before this was run, and nothing here feeds back into them.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from common import DATASETS, row, spread  # noqa: E402

from recsys_metric import Recommender, TrainConfig, leave_last_out, read_ratings  # noqa: E402
from recsys_metric.baselines import make_baseline  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402

METRICS = ("HR@10", "NDCG@10")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    a = ap.parse_args()
    out: dict = {}
    for name in ("ml-100k", "ml-latest-small"):
        path = DATASETS[name]
        if not path.is_file():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        train, test = leave_last_out(read_ratings(path))
        runs: dict[str, list[dict]] = {"cml": [], "als": [], "bpr": [], "als-recency": []}
        for s in a.seeds:
            models = {"cml": Recommender(TrainConfig(seed=s), index="exact").fit(
                          train, show_progress=False),
                      "als": make_baseline("als", seed=s).fit(train),
                      "bpr": make_baseline("bpr", seed=s).fit(train),
                      "als-recency": make_baseline("als-recency", seed=s).fit(train)}
            for m, model in models.items():
                r = evaluate_ranking(model, train.matrix, test.matrix, k=10)
                runs[m].append({k: float(r[k]) for k in METRICS})
        pop = evaluate_ranking(make_baseline("popularity").fit(train), train.matrix,
                               test.matrix, k=10)
        print(f"\n{name}: {test.matrix.getnnz(axis=1).astype(bool).sum()} test users, seeds "
              f"{a.seeds[0]}-{a.seeds[-1]}\n")
        print("| model | HR@10 mean (sd) [min, max] | NDCG@10 mean (sd) [min, max] |")
        print("|---|---|---|")
        res = {}
        for m, rows in runs.items():
            res[m] = {}
            cells = []
            for k in METRICS:
                x = res[m][k] = spread([r[k] for r in rows])
                cells.append(f"{x['mean']:.4f} ({x['sd']:.4f}) [{x['min']:.4f}, {x['max']:.4f}]")
            print(row([m, *cells]))
        print(f"| popularity | {pop['HR@10']:.4f} | {pop['NDCG@10']:.4f} |")
        n = len(a.seeds)
        for k in METRICS:
            wins = sum(runs["cml"][i][k] > max(runs["als"][i][k], runs["bpr"][i][k])
                       for i in range(n))
            wins_r = sum(runs["cml"][i][k] > runs["als-recency"][i][k] for i in range(n))
            res[f"cml_wins_{k}"], res[f"cml_wins_recency_{k}"] = int(wins), int(wins_r)
            print(f"\nCML above ALS and BPR (same seed) on {k}: {wins} of {n} seeds; above "
                  f"als-recency: {wins_r} of {n}")
        out[name] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
