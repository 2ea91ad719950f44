"""Tuning on a validation split shaped like the test split, or on leave-last-out.

The ml-100k ua split (10 random items per user): each model is tuned with 20 Optuna trials on a
validation split carved from ua.base, once by leave-last-out (what tuning always carved before)
and once as a random 20% holdout (the shape ``--task auto`` now picks for such a split), then
fitted on ua.base with the best parameters and scored on ua.test.

    .venv/bin/python experiments/tune_shape.py ease als

One JSON line per (model, validation shape); the last line is one JSON object of them all.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from common import ML100K as D  # noqa: E402

from recsys_metric import TrainConfig  # noqa: E402
from recsys_metric.compare import fit_model, tune_models  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402
from recsys_metric.protocols import read_split  # noqa: E402


def main(models: list[str]) -> None:
    if not (D / "ua.base").is_file():
        print(f"skip: {D} not found", file=sys.stderr)
        return
    train, test, _ = read_split(D / "ua.base", D / "ua.test")
    rows = []
    for model in models:
        for shape in ("leave-last-out", "random"):
            t = tune_models(train, [model], 20, TrainConfig(), 0, False, None, shape)[model]
            fitted = fit_model(model, train, TrainConfig(), 0, params=t["config"])
            r = evaluate_ranking(fitted, train.matrix, test.matrix, k=10)
            rows.append({"model": model, "validation": shape, "params": t["best_params"],
                         "valid_NDCG@10": round(t["best_value"], 4),
                         "test_NDCG@10": round(r["NDCG@10"], 4),
                         "test_HR@10": round(r["HR@10"], 4)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main(sys.argv[1:] or ["ease", "als"])
