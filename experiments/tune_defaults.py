"""Choose CML's default hyper-parameters on validation splits carved from train (never test).

    .venv/bin/python experiments/tune_defaults.py [--datasets books ml-100k ml-latest-small]
        [--out experiments/results/defaults.md]

For each dataset: leave-last-out gives (train, test); test is set aside and never read. From train,
leave-last-out again gives (fit, valid). Every candidate config is fit on ``fit`` and scored on
``valid`` after each epoch (full ranking, NDCG@10 and HR@10); implicit ALS and BPR with their
default hyper-parameters are scored on the same validation split for scale. A coordinate search
varies one hyper-parameter at a time around the current best, judged by the mean over datasets of
validation NDCG@10 relative to ALS's. MovieLens copies are read from ../shared and skipped when
absent. Last line: one JSON object with the chosen config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from common import DATASETS, header, pair, row, validation_splits  # noqa: E402

from recsys_metric import TrainConfig, Trainer  # noqa: E402
from recsys_metric.baselines import make_baseline  # noqa: E402
from recsys_metric.evaluation import evaluate_ranking  # noqa: E402

GRID = {
    "margin": [0.25, 0.5, 1.0, 1.5, 2.0],
    "n_negatives": [5, 10, 20, 50],
    "dim": [32, 64, 128],
    "lr": [0.02, 0.05, 0.1, 0.2],
    "clip_norm": [0.5, 1.0, 2.0],
    "rank_weight": [True, False],
}


def score_config(cfg: TrainConfig, splits) -> dict:
    """Best validation NDCG@10 over epochs (and the epoch) per dataset."""
    res = {}
    for name, (fit, valid) in splits.items():
        t = time.perf_counter()
        hist = Trainer(cfg, show_progress=False).fit(fit, valid).history
        best = max(hist, key=lambda h: h["val_NDCG@10"])
        res[name] = {"NDCG@10": best["val_NDCG@10"], "HR@10": best["val_HR@10"],
                     "epoch": best["epoch"], "seconds": time.perf_counter() - t}
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=1, help="coordinate-search passes")
    ap.add_argument("--start", help="JSON object of TrainConfig fields to start the search from")
    ap.add_argument("--out")
    a = ap.parse_args()
    splits = validation_splits(a.datasets)
    peers = {}
    for name, (fit, valid) in splits.items():
        for model in ("als", "bpr"):
            m = evaluate_ranking(make_baseline(model, seed=0).fit(fit), fit, valid, k=10)
            peers.setdefault(model, {})[name] = {"NDCG@10": m["NDCG@10"], "HR@10": m["HR@10"]}

    def objective(r):  # mean over datasets of NDCG@10 relative to ALS's
        return float(np.mean([r[n]["NDCG@10"] / max(peers["als"][n]["NDCG@10"], 1e-9)
                              for n in r]))

    start = json.loads(a.start) if a.start else {}
    best_cfg = TrainConfig.from_dict({**TrainConfig().to_dict(), **start, "epochs": a.epochs})
    best = score_config(best_cfg, splits)
    rows = [("start", best_cfg, best)]
    print(f"start: {objective(best):.3f}", flush=True)
    for _ in range(a.rounds):
        for key, values in GRID.items():
            for v in values:
                if getattr(best_cfg, key) == v:
                    continue
                cfg = TrainConfig.from_dict({**best_cfg.to_dict(), key: v})
                r = score_config(cfg, splits)
                rows.append((f"{key}={v}", cfg, r))
                print(f"{key}={v}: {objective(r):.3f} "
                      f"{ {n: round(x['NDCG@10'], 4) for n, x in r.items()} }", flush=True)
                if objective(r) > objective(best):
                    best_cfg, best = cfg, r
    names = list(splits)
    lines = ["Validation NDCG@10 / HR@10 (each user's latest train item held out; the test split "
             "is never read), best epoch in brackets. Objective: mean NDCG@10 relative to ALS.",
             "", header(["config"], [*names, "objective"])]
    for label, _cfg, r in rows:
        cells = [f"{pair(r[n])} [{r[n]['epoch']}]" for n in names]
        lines.append(row([label, *cells, f"{objective(r):.3f}"]))
    for model in ("als", "bpr"):
        cells = [pair(peers[model][n]) for n in names]
        lines.append(row([f"implicit {model} (defaults)", *cells]) + " |")
    epochs = int(np.median([best[n]["epoch"] for n in names]))
    chosen = {**best_cfg.to_dict(), "epochs": epochs}
    lines += ["", "Chosen: " + ", ".join(f"{k}={chosen[k]}" for k in GRID) +
              f", epochs={epochs} (median best epoch)"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(f"# CML defaults\n\nCommand: `{' '.join(sys.argv)}`\n\n{text}\n")
    print(json.dumps(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
