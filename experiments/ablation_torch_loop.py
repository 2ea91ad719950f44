"""Ablations that need the torch loop (covariance regulariser; optimiser), on validation splits.

    .venv/bin/python experiments/ablation_torch_loop.py [--datasets ml-100k] [--seeds 0]

The fused CPU loop implements the default objective only; the covariance term (CML paper) and the
other optimisers run in the torch loop. Both arms of each comparison use the torch loop (same
batching), so only the ablated term differs. Validation NDCG@10 / HR@10 after the configured epochs;
the test split is never read. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tune_defaults import validation_splits

from recsys_metric import TrainConfig, Trainer
from recsys_metric.evaluation import evaluate_ranking

ARMS = {
    "torch loop, defaults": {},
    "+ covariance term (weight 1)": {"cov_weight": 1.0},
    "+ covariance term (weight 10)": {"cov_weight": 10.0},
    "Adam instead of Adagrad (lr 0.01)": {"optimizer": "adam", "lr": 0.01},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["ml-100k"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--batch-size", type=int, default=1024)
    a = ap.parse_args()
    splits = validation_splits(a.datasets)
    print("| arm | " + " | ".join(splits) + " |")
    print("|---|" + "---:|" * len(splits))
    out = {}
    for label, kw in ARMS.items():
        cells = []
        for name, (fit, valid) in splits.items():
            cfg = dict(backend="torch", batch_size=a.batch_size, **kw)
            ms = [evaluate_ranking(Trainer(TrainConfig(seed=s, **cfg), show_progress=False)
                                  .fit(fit), fit, valid, k=10)
                  for s in a.seeds]
            nd, hr = (float(np.mean([m[k] for m in ms])) for k in ("NDCG@10", "HR@10"))
            out.setdefault(label, {})[name] = {"NDCG@10": nd, "HR@10": hr}
            cells.append(f"{nd:.4f} / {hr:.4f}")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
