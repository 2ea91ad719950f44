"""Choose ``recent_share`` on validation splits, averaged over training seeds (never the test).

    .venv/bin/python experiments/recency_seeds.py [--seeds 0 1 ... 9] [--shares 0 0.1 0.2 0.3 0.5]
        [--visits 2]

``recent_share`` = q, ``recent_visits`` = v: each user's latest q of their history (by time,
file row on ties) is visited v times per epoch (every grid point of shares x visits). Validation
split as in tune_defaults.py (each user's latest train item; the test part is never read); CML
with its other defaults; NDCG@10 / HR@10, mean over the seeds (standard error of the mean in
brackets); implicit ALS with its defaults (one fit) for scale. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tune_defaults import validation_interactions  # noqa: E402

from recsys_metric import TrainConfig, Trainer  # noqa: E402
from recsys_metric.baselines import make_baseline  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--visits", type=int, nargs="+", default=[2])
    ap.add_argument("--datasets", nargs="+", default=["books", "ml-100k", "ml-latest-small"])
    a = ap.parse_args()
    splits = validation_interactions(a.datasets)
    print(f"NDCG@10 / HR@10 on validation, mean of seeds {a.seeds[0]}-{a.seeds[-1]} "
          "(standard error)\n")
    print("| recent_share | recent_visits | " + " | ".join(splits) + " |")
    print("|---:|---:|" + "---|" * len(splits))
    rows = []
    for q, v in itertools.product(a.shares, a.visits):
        row: dict = {"recent_share": q, "recent_visits": v}
        for name, (fit, valid) in splits.items():
            ms = [evaluate_ranking(Trainer(TrainConfig(seed=s, recent_share=q, recent_visits=v),
                                           show_progress=False).fit(fit), fit.matrix,
                                   valid.matrix, k=10) for s in a.seeds]
            row[name] = {m: [float(np.mean([x[m] for x in ms])),
                             float(np.std([x[m] for x in ms], ddof=1) / np.sqrt(len(ms)))]
                         for m in ("NDCG@10", "HR@10")}
        rows.append(row)
        cells = [f"{row[n]['NDCG@10'][0]:.4f} ({row[n]['NDCG@10'][1]:.4f}) / "
                 f"{row[n]['HR@10'][0]:.4f} ({row[n]['HR@10'][1]:.4f})" for n in splits]
        print(f"| {q} | {v} | " + " | ".join(cells) + " |", flush=True)
    als = {}
    for name, (fit, valid) in splits.items():
        m = evaluate_ranking(make_baseline("als", seed=0).fit(fit.matrix), fit.matrix,
                             valid.matrix, k=10)
        als[name] = {k: float(m[k]) for k in ("NDCG@10", "HR@10")}
    print("| ALS (defaults) | | " + " | ".join(
        f"{als[n]['NDCG@10']:.4f} / {als[n]['HR@10']:.4f}" for n in splits) + " |")
    print(json.dumps({"rows": rows, "als": als}))


if __name__ == "__main__":
    main()
