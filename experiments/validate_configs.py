"""Score TrainConfig variants on validation splits carved from train, averaged over seeds.

    .venv/bin/python experiments/validate_configs.py '{}' '{"lanes": 2}' [--seeds 0 1 2]

Each argument is a JSON object of TrainConfig overrides. Splits as in tune_defaults.py (the test
part is never read); metrics at the configured epoch count, full ranking. Prints one markdown row
per config (mean validation NDCG@10 / HR@10 per dataset, and seconds per fit); last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tune_defaults import validation_interactions

from recsys_metric import TrainConfig, Trainer
from recsys_metric.evaluation import evaluate_ranking


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="JSON objects of TrainConfig overrides")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["books", "ml-100k", "ml-latest-small"])
    a = ap.parse_args()
    splits = validation_interactions(a.datasets)
    print("| config | " + " | ".join(splits) + " | s/fit |", flush=True)
    print("|---|" + "---:|" * (len(splits) + 1), flush=True)
    rows = []
    for text in a.configs:
        overrides = json.loads(text)
        row, secs = {"config": overrides}, []
        for name, (fit, valid) in splits.items():
            ms = []
            for seed in a.seeds:
                t = time.perf_counter()
                cfg = TrainConfig.from_dict({**overrides, "seed": seed})
                res = Trainer(cfg, show_progress=False).fit(fit)
                secs.append(time.perf_counter() - t)
                ms.append(evaluate_ranking(res, fit.matrix, valid.matrix, k=10))
            row[name] = {m: float(np.mean([x[m] for x in ms])) for m in ("NDCG@10", "HR@10")}
        row["seconds_per_fit"] = float(np.mean(secs))
        rows.append(row)
        cells = [f"{row[n]['NDCG@10']:.4f} / {row[n]['HR@10']:.4f}" for n in splits]
        print(f"| `{text}` | " + " | ".join(cells) + f" | {row['seconds_per_fit']:.1f} |",
              flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
