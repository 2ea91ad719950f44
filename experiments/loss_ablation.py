"""The loss family on validation splits shaped like each task: which loss, distance and negatives.

    .venv/bin/python experiments/loss_ablation.py [--seeds 0 1 2] [--datasets ml-100k "ml-100k ua"
        citeulike] [--protocols leave-last-out random] [--variants '{"loss": "softmax"}' ...]

For each dataset and protocol the data is split as `evaluate` splits it, and a validation split is
carved from the train part in the test's shape (as task_defaults.py does; the test part is never
read). Each variant is a JSON object of TrainConfig overrides on top of the task's defaults
(time-blind for a random holdout, TrainConfig.for_task). Prints mean ± sd validation NDCG@10 (and
@50 for citeulike) over the seeds and seconds per fit; last line JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import pm, row
from task_defaults import tasks

from recsys_metric.evaluation import evaluate_ranking
from recsys_metric.split import split
from recsys_metric.train import TrainConfig, Trainer

VARIANTS = [
    {},
    {"loss": "softmax"},
    {"loss": "softmax", "distance": "cosine"},
    {"loss": "softmax", "distance": "cosine", "temperature": 0.05},
    {"loss": "softmax", "n_negatives": 300, "shared_negatives": True},
    {"loss": "softmax", "sampler": "popularity"},
    {"loss": "contrastive", "distance": "cosine", "margin": 0.6, "negative_weight": 5.0},
    {"loss": "contrastive", "margin": 1.0, "negative_weight": 5.0},
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-100k ua", "citeulike"])
    ap.add_argument("--protocols", nargs="+", default=["leave-last-out", "random"])
    ap.add_argument("--variants", nargs="+", type=json.loads, default=VARIANTS)
    a = ap.parse_args()
    print("| dataset | protocol | variant | NDCG@10 | NDCG@50 | s/fit |")
    print("|---|---|---|---:|---:|---:|")
    out = []
    for name, protocol, train in tasks(a.datasets):
        shape = "random" if protocol.startswith("pre-split") else protocol
        if shape not in a.protocols:
            continue
        fit, valid = split(train, shape, 0)
        task = "next" if shape == "leave-last-out" else "any"
        for variant in a.variants:
            ms, secs = [], []
            for seed in a.seeds:
                cfg = TrainConfig(seed=seed).for_task(task)
                cfg = TrainConfig.from_dict({**cfg.to_dict(), **variant})
                t = time.perf_counter()
                res = Trainer(cfg, show_progress=False).fit(fit)
                secs.append(time.perf_counter() - t)
                ms.append(evaluate_ranking(res, fit.matrix, valid.matrix, k=[10, 50]))
            cells = {m: (float(np.mean([x[m] for x in ms])), float(np.std([x[m] for x in ms])))
                     for m in ("NDCG@10", "NDCG@50")}
            out.append({"dataset": name, "protocol": protocol, "variant": variant,
                        **{m: v[0] for m, v in cells.items()},
                        "sd": {m: v[1] for m, v in cells.items()},
                        "seconds_per_fit": float(np.mean(secs))})
            print(row([name, protocol, f"`{json.dumps(variant)}`", pm(*cells["NDCG@10"]),
                       pm(*cells["NDCG@50"]), f"{np.mean(secs):.1f}"]), flush=True)
    print(json.dumps({"seeds": a.seeds, "rows": out}))


if __name__ == "__main__":
    main()
