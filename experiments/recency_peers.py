"""Give the peer the same recency: implicit ALS with a higher weight on each user's latest pairs.

    .venv/bin/python experiments/recency_peers.py [--seeds 0 1 2]

CML's ``recent_share`` / ``recent_visits`` visit each user's latest interactions more often. The
fair question is whether that is CML's edge or the time order's: here implicit ALS (its defaults
otherwise) gets the same information as a confidence weight, the matrix entry of each user's
latest q (same rank rule as ``Interactions.recency``) set to w instead of 1
(``ALS(recent_share=q, recent_weight=w)``). implicit's BPR
ignores the matrix values (checked: identical factors for weighted and unweighted input), so it
cannot take it this way. Validation splits as in tune_defaults.py (the test part is never read);
NDCG@10 / HR@10, mean over ALS seeds. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from tune_defaults import validation_interactions  # noqa: E402

from recsys_metric.baselines import make_baseline  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402

ARMS = [(0.0, 1.0), (0.1, 2.0), (0.1, 4.0), (0.2, 4.0), (0.3, 2.0)]  # (share, weight)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    splits = validation_interactions(["books", "ml-100k", "ml-latest-small"])
    print("| ALS: latest share | weight | " + " | ".join(splits) + " |")
    print("|---:|---:|" + "---:|" * len(splits))
    rows = []
    for q, w in ARMS:
        row: dict = {"share": q, "weight": w}
        for name, (fit, valid) in splits.items():
            ms = [evaluate_ranking(make_baseline("als", seed=s, recent_share=q, recent_weight=w)
                                   .fit(fit), fit.matrix, valid.matrix, k=10) for s in a.seeds]
            row[name] = {k: float(np.mean([x[k] for x in ms])) for k in ("NDCG@10", "HR@10")}
        rows.append(row)
        print(f"| {q} | {w:g} | " + " | ".join(
            f"{row[n]['NDCG@10']:.4f} / {row[n]['HR@10']:.4f}" for n in splits) + " |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
