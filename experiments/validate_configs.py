"""Score TrainConfig variants on validation splits carved from train, averaged over seeds.

    .venv/bin/python experiments/validate_configs.py '{}' '{"lanes": 2}' [--seeds 0 1 2]

Each argument is a JSON object of TrainConfig overrides. Splits: common.validation_interactions
(the test part is never read); metrics at the configured epoch count, full ranking. Prints one
markdown row per config (mean validation NDCG@10 / HR@10 per dataset, and seconds per fit);
last line: JSON.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import fit_seeds, header, mean_metrics, pair, row, validation_interactions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="JSON objects of TrainConfig overrides")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["books", "ml-100k", "ml-latest-small"])
    a = ap.parse_args()
    splits = validation_interactions(a.datasets)
    print(header(["config"], [*splits, "s/fit"]), flush=True)
    rows = []
    for text in a.configs:
        overrides = json.loads(text)
        out, secs = {"config": overrides}, []
        for name, (fit, valid) in splits.items():
            ms, s = fit_seeds(overrides, fit, valid, a.seeds)
            secs += s
            out[name] = mean_metrics(ms)
        out["seconds_per_fit"] = float(np.mean(secs))
        rows.append(out)
        print(row([f"`{text}`", *(pair(out[n]) for n in splits), f"{out['seconds_per_fit']:.1f}"]),
              flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
